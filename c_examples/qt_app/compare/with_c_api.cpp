// The comparison window on asyncbridge's C API (asyncbridge.h): Start runs a 2 s job (100 steps
// of 20 ms summing squares) with a progress bar, Cancel stops it, closing the window mid-run
// stops it too.
#include <asyncbridge.h>

#include <QApplication>
#include <QLabel>
#include <QProgressBar>
#include <QPushButton>
#include <QSocketNotifier>
#include <QVBoxLayout>

#include <cerrno>
#include <chrono>
#include <new>
#include <thread>

static void freeSum(void *sum) {
    delete static_cast<quint64 *>(sum);
}

// Called from C: it must not throw.
static int32_t sumOfSquares(bridge_job_t *job, void *) {
    quint64 sum = 0;
    for (int step = 1; step <= 100; ++step) {
        if (bridge_job_is_cancelled(job))
            return 0;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        sum += quint64(step) * quint64(step);
        bridge_job_set_progress(job, step, 100);
    }
    auto *value = new (std::nothrow) quint64(sum);
    if (!value)
        return bridge_job_fail(job, ENOMEM, "out of memory");
    bridge_job_set_value(job, value, freeSum);
    return 0;
}

class Window : public QWidget {
public:
    explicit Window(bridge_t *bridge) : m_bridge(bridge) {
        if (bridge_queue_new(&m_queue) != BRIDGE_OK || bridge_queue_fd(m_queue) < 0)
            qFatal("no completion queue");
        // The descriptor is readable while callbacks wait in the queue.
        m_notifier = new QSocketNotifier(bridge_queue_fd(m_queue), QSocketNotifier::Read, this);
        connect(m_notifier, &QSocketNotifier::activated, this,
                [this] { bridge_queue_dispatch(m_queue, 0); });
        auto *layout = new QVBoxLayout(this);
        layout->addWidget(m_bar);
        layout->addWidget(m_label);
        layout->addWidget(m_start);
        layout->addWidget(m_cancel);
        m_bar->setRange(0, 100);
        m_cancel->setEnabled(false);
        connect(m_start, &QPushButton::clicked, this, &Window::start);
        connect(m_cancel, &QPushButton::clicked, this, [this] {
            future_cancel(m_future);
            m_label->setText("cancelling…");
        });
    }
    // In this order: no callback may reach the window once it is gone.
    ~Window() override {
        delete m_notifier; // before bridge_queue_free() closes its descriptor
        if (m_future) {
            future_withdraw_via(m_future, m_queue, this); // queued or not, they never run
            future_cancel(m_future);
            future_release(m_future);
        }
        bridge_queue_free(m_queue);
    }

private:
    void start() {
        if (bridge_submit(m_bridge, sumOfSquares, nullptr, nullptr, BRIDGE_RUN_BLOCKING,
                          &m_future) != BRIDGE_OK) {
            m_label->setText("failed: could not start");
            return;
        }
        // Run inside bridge_queue_dispatch(), on this thread.
        future_on_progress_via(m_future, m_queue, onProgress, this);
        future_on_done_via(m_future, m_queue, onDone, this);
        m_bar->setValue(0);
        m_label->setText("working…");
        setRunning(true);
    }
    static void onProgress(future_t *, uint64_t done, uint64_t, void *self) {
        static_cast<Window *>(self)->m_bar->setValue(int(done));
    }
    static void onDone(future_t *f, void *self) {
        auto *window = static_cast<Window *>(self);
        switch (future_status(f)) {
        case BRIDGE_OK:
            window->m_label->setText(
                QString("done: %1").arg(*static_cast<quint64 *>(future_value(f))));
            break;
        case BRIDGE_CANCELLED:
            window->m_label->setText("cancelled");
            break;
        default:
            window->m_label->setText(QString("failed: %1").arg(future_error_message(f)));
        }
        future_release(window->m_future);
        window->m_future = nullptr;
        window->setRunning(false);
    }
    void setRunning(bool running) {
        m_start->setEnabled(!running);
        m_cancel->setEnabled(running);
    }

    bridge_t *m_bridge;
    bridge_queue_t *m_queue = nullptr;
    QSocketNotifier *m_notifier;
    future_t *m_future = nullptr;
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
    bridge_t *bridge = nullptr;
    if (bridge_start(nullptr, &bridge) != BRIDGE_OK)
        qFatal("bridge_start failed");
    // count-lines: skip
    if (app.arguments().contains("--selftest")) {
        const int rc = selftest([&] { return new Window(bridge); },
                                [&] {
                                    bridge_stats_t stats{};
                                    bridge_stats(bridge, &stats);
                                    return stats.pending == 0 && stats.cancelled == 2;
                                });
        bridge_free(bridge);
        return rc;
    }
    // count-lines: end
    int rc;
    {
        Window window(bridge);
        window.show();
        rc = app.exec();
    } // the window goes before the bridge
    bridge_free(bridge);
    return rc;
}
