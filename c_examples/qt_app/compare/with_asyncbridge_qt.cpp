// The comparison window on asyncbridge.hpp and asyncbridge_qt.hpp: Start runs a 2 s job (100
// steps of 20 ms summing squares) with a progress bar, Cancel stops it, closing the window
// mid-run stops it too.
#include <asyncbridge_qt.hpp>

#include <QApplication>
#include <QLabel>
#include <QProgressBar>
#include <QPushButton>
#include <QThread>
#include <QVBoxLayout>

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

// count-lines: skip
#include "selftest.h" // the self-test, the same for the three versions
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
