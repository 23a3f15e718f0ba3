// ProgressWindow: a Qt widget that runs slow, cancellable work on an asyncbridge
// bridge and shows its progress and result, with every callback delivered on the
// GUI thread through a completion queue (bridge_queue_t).
//
// The pattern, in four steps (see progresswindow.cpp):
//   1. bridge_submit() the work with BRIDGE_RUN_BLOCKING: it runs on the bridge's
//      blocking pool, so the GUI thread never waits for it.
//   2. future_on_progress_via() / future_on_done_via() on the window's queue: the
//      callbacks are not run by the bridge's threads, they wait in the queue.
//   3. The Qt event loop learns that the queue has something (a QSocketNotifier on
//      bridge_queue_fd(), or the bridge_queue_set_notify() hook posting a queued call)
//      and calls bridge_queue_dispatch() on the GUI thread, which runs the callbacks.
//   4. When the window goes away, it withdraws its callbacks, cancels and releases its
//      future and frees its queue, so nothing ever calls back into a dead window.
#pragma once

#include <asyncbridge.h>

#include <QWidget>

#include <atomic>

QT_BEGIN_NAMESPACE
class QLabel;
class QProgressBar;
class QPushButton;
class QSocketNotifier;
QT_END_NAMESPACE

class ProgressWindow : public QWidget {
    Q_OBJECT

public:
    // How the Qt event loop is told that the completion queue has callbacks to run.
    enum class Delivery {
        // A QSocketNotifier watches bridge_queue_fd(), which is readable while
        // callbacks are pending. The usual choice on Linux and other Unix systems.
        SocketNotifier,
        // bridge_queue_set_notify(): the library calls a hook (on any thread) when the
        // queue becomes non-empty; the hook posts a queued call to the GUI thread.
        // Works where there is no descriptor to watch (the portable path).
        NotifyHook,
    };

    // The work is `steps` steps of `stepMs` milliseconds each. `bridge` must outlive
    // the window (main() frees it after the window is gone).
    explicit ProgressWindow(bridge_t *bridge, Delivery delivery, int steps = 50,
                            int stepMs = 20, QWidget *parent = nullptr);
    ~ProgressWindow() override;

    // The value the work produces when it completes: 1² + 2² + ... + steps².
    static quint64 expectedResult(int steps);

    // For the test, which clicks these and reads what they show.
    QPushButton *startButton() const { return m_start; }
    QPushButton *cancelButton() const { return m_cancel; }
    QProgressBar *progressBar() const { return m_progress; }
    QLabel *statusLabel() const { return m_status; }

    // A self-check the test reads: every callback the library delivers to any
    // ProgressWindow is counted, together with the promises this example makes about
    // them. Only counts; the window does not need it to work.
    struct CallbackAudit {
        std::atomic<int> callbacks{0};      // callbacks that ran
        std::atomic<int> offGuiThread{0};   // ... on a thread other than the GUI thread
        std::atomic<int> onDeadWindow{0};   // ... for a window already destroyed
    };
    static CallbackAudit &audit();

signals:
    // Emitted from the callbacks, hence on the GUI thread.
    void progressReported(quint64 done, quint64 total);
    void finished(const QString &status);

private slots:
    void start();
    void cancel();
    // Runs the callbacks waiting in the queue; always called on the GUI thread.
    void dispatchCallbacks();

private:
    // The callbacks handed to the library are plain functions; `userData` is the
    // window they belong to.
    static void onProgress(future_t *f, uint64_t done, uint64_t total, void *userData);
    static void onDone(future_t *f, void *userData);
    static void notifyHook(void *userData);
    static ProgressWindow *windowForCallback(void *userData);

    void setRunning(bool running);

    bridge_t *m_bridge;
    const int m_steps;
    const int m_stepMs;
    bridge_queue_t *m_queue = nullptr;
    QSocketNotifier *m_notifier = nullptr;
    // The work in flight: one reference, from bridge_submit(); null when idle.
    future_t *m_future = nullptr;

    QPushButton *m_start;
    QPushButton *m_cancel;
    QProgressBar *m_progress;
    QLabel *m_status;
};
