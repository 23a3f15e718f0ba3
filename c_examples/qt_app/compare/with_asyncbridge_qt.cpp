// The comparison window on asyncbridge.hpp and asyncbridge_qt.hpp: Start runs a 2 s job (100
// steps of 20 ms summing squares) with a progress bar, Cancel stops it, closing the window
// mid-run stops it too.
#include <asyncbridge_qt.hpp>

#include <QApplication>
#include <QEventLoop>
#include <QLabel>
#include <QProgressBar>
#include <QPushButton>
#include <QThread>
#include <QTimer>
#include <QVBoxLayout>

#include <functional>

class Window : public QWidget {
public:
    explicit Window(bridge_t *bridge) : m_bridge(bridge) {
        auto *layout = new QVBoxLayout(this);
        layout->addWidget(m_bar);
        layout->addWidget(m_label);
        layout->addWidget(m_start);
        layout->addWidget(m_cancel);
        m_bar->setRange(0, 100);
        m_cancel->setEnabled(false);
        connect(m_start, &QPushButton::clicked, this, &Window::start);
        connect(m_cancel, &QPushButton::clicked, this, [this] {
            m_job.cancel();
            m_label->setText("cancelling…");
        });
    }

private:
    void start() {
        // cancel_on_drop(): a window destroyed mid-run cancels its job.
        m_job = asyncbridge::submit(m_bridge, [](asyncbridge::Job &job) {
                    quint64 sum = 0;
                    for (int step = 1; step <= 100; ++step) {
                        job.check_cancelled();
                        QThread::msleep(20);
                        sum += quint64(step) * quint64(step);
                        job.progress(step, 100);
                    }
                    return sum;
                }).cancel_on_drop();
        // Both run on this window's thread, and never once the window is gone.
        asyncbridge::qt::on_progress(
            m_job, this, [this](uint64_t done, uint64_t) { m_bar->setValue(int(done)); });
        asyncbridge::qt::then(m_job, this, [this](asyncbridge::Future<quint64> &done) {
            try {
                m_label->setText(QString("done: %1").arg(done.get()));
            } catch (const asyncbridge::cancelled &) {
                m_label->setText("cancelled");
            } catch (const std::exception &e) {
                m_label->setText(QString("failed: %1").arg(e.what()));
            }
            setRunning(false);
        });
        m_bar->setValue(0);
        m_label->setText("working…");
        setRunning(true);
    }
    void setRunning(bool running) {
        m_start->setEnabled(!running);
        m_cancel->setEnabled(running);
    }

    bridge_t *m_bridge;
    asyncbridge::Future<quint64> m_job;
    QProgressBar *m_bar = new QProgressBar;
    QLabel *m_label = new QLabel("idle");
    QPushButton *m_start = new QPushButton("Start");
    QPushButton *m_cancel = new QPushButton("Cancel");
};

// count-lines: skip -- the self-test, the same in the three versions
// --selftest: drives a window headless as a user would; exits 0 only if all went right.
static bool waitFor(const std::function<bool()> &done) {
    QEventLoop loop;
    QTimer poll;
    QObject::connect(&poll, &QTimer::timeout, &loop, [&] {
        if (done())
            loop.quit();
    });
    poll.start(5);
    QTimer::singleShot(15000, &loop, [&] { loop.exit(1); }); // a watchdog, not a timing
    return done() || loop.exec() == 0;
}

static int selftest(const std::function<QWidget *()> &makeWindow,
                    const std::function<bool()> &workStopped) {
    const auto fail = [](const char *what) {
        qCritical("selftest failed: %s", what);
        return 1;
    };
    QWidget *window = makeWindow();
    window->show();
    QPushButton *start = nullptr, *cancel = nullptr;
    for (auto *button : window->findChildren<QPushButton *>())
        (button->text() == "Start" ? start : cancel) = button;
    auto *bar = window->findChild<QProgressBar *>();
    auto *label = window->findChild<QLabel *>();

    start->click();
    if (!waitFor([&] { return bar->value() > 0; }))
        return fail("no progress");
    if (!waitFor([&] { return start->isEnabled(); }) || label->text() != "done: 338350" ||
        bar->value() != 100)
        return fail("the first run did not show its result");
    start->click();
    if (bar->value() != 0 || !waitFor([&] { return bar->value() >= 10; }))
        return fail("no progress in the second run");
    cancel->click();
    if (!waitFor([&] { return start->isEnabled(); }) || label->text() != "cancelled")
        return fail("Cancel did not stop the run");
    start->click();
    if (!waitFor([&] { return bar->value() >= 10; }))
        return fail("no progress in the third run");
    delete window; // mid-flight
    // Run the event loop past the time the work would have taken: a callback reaching the
    // dead window would touch freed memory (the AddressSanitizer build reports it).
    QEventLoop loop;
    QTimer::singleShot(2500, &loop, &QEventLoop::quit);
    loop.exec();
    if (!waitFor(workStopped))
        return fail("the work of the closed window did not stop");
    return 0;
}
// count-lines: end

int main(int argc, char *argv[]) {
    QApplication app(argc, argv);
    asyncbridge::Bridge bridge;
    // count-lines: skip
    if (app.arguments().contains("--selftest")) {
        return selftest([&] { return new Window(bridge); },
                        [&] {
                            bridge_stats_t stats{};
                            bridge_stats(bridge, &stats);
                            return stats.pending == 0 && stats.cancelled == 2;
                        });
    }
    // count-lines: end
    Window window(bridge);
    window.show();
    return app.exec();
}
