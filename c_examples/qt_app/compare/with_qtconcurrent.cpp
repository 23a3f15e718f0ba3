// The comparison window on QtConcurrent::run, QPromise and QFutureWatcher: Start runs a 2 s job
// (100 steps of 20 ms summing squares) with a progress bar, Cancel stops it, closing the window
// mid-run stops it too.
#include <QApplication>
#include <QEventLoop>
#include <QFutureWatcher>
#include <QLabel>
#include <QProgressBar>
#include <QPromise>
#include <QPushButton>
#include <QThread>
#include <QThreadPool>
#include <QTimer>
#include <QVBoxLayout>
#include <QtConcurrent>

#include <functional>

static void sumOfSquares(QPromise<quint64> &promise) {
    promise.setProgressRange(0, 100);
    quint64 sum = 0;
    for (int step = 1; step <= 100; ++step) {
        if (promise.isCanceled())
            return;
        QThread::msleep(20);
        sum += quint64(step) * quint64(step);
        promise.setProgressValue(step);
    }
    promise.addResult(sum);
}

class Window : public QWidget {
public:
    Window() {
        auto *layout = new QVBoxLayout(this);
        layout->addWidget(m_bar);
        layout->addWidget(m_label);
        layout->addWidget(m_start);
        layout->addWidget(m_cancel);
        m_bar->setRange(0, 100);
        m_cancel->setEnabled(false);
        connect(m_start, &QPushButton::clicked, this, &Window::start);
        connect(m_cancel, &QPushButton::clicked, this, [this] {
            m_watcher.cancel();
            m_label->setText("cancelling…");
        });
        connect(&m_watcher, &QFutureWatcher<quint64>::progressValueChanged, m_bar,
                &QProgressBar::setValue);
        connect(&m_watcher, &QFutureWatcher<quint64>::finished, this, &Window::finished);
    }
    // The job holds nothing of the window; stop it, and the watcher goes with the window.
    ~Window() override { m_watcher.cancel(); }

private:
    void start() {
        m_bar->setValue(0);
        m_label->setText("working…");
        setRunning(true);
        m_watcher.setFuture(QtConcurrent::run(sumOfSquares));
    }
    void finished() {
        if (m_watcher.isCanceled()) {
            m_label->setText("cancelled");
        } else {
            try {
                m_label->setText(QString("done: %1").arg(m_watcher.result()));
            } catch (const std::exception &e) {
                m_label->setText(QString("failed: %1").arg(e.what()));
            }
        }
        setRunning(false);
    }
    void setRunning(bool running) {
        m_start->setEnabled(!running);
        m_cancel->setEnabled(running);
    }

    QFutureWatcher<quint64> m_watcher;
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
    // count-lines: skip
    if (app.arguments().contains("--selftest")) {
        return selftest([] { return new Window; },
                        [] { return QThreadPool::globalInstance()->activeThreadCount() == 0; });
    }
    // count-lines: end
    Window window;
    window.show();
    return app.exec();
}
