// ProgressWindow: a Qt widget that runs slow, cancellable work on an asyncbridge
// bridge and shows its progress and result, with every callback delivered on the
// GUI thread through a completion queue (bridge_queue_t). Two kinds of work: Start
// runs a C function on the bridge's blocking pool; Download fetches a URL with the
// library's HTTP client, on the bridge's loop, with no thread of its own.
//
// The pattern, in four steps (see progresswindow.cpp):
//   1. bridge_submit() the work with BRIDGE_RUN_BLOCKING: it runs on the bridge's
//      blocking pool, so the GUI thread never waits for it. (Or bridge_http_send():
//      the same kind of future, for a download.)
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
class QLineEdit;
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

    // What the URL field holds at first: $QT_APP_DOWNLOAD_URL, else a server on this
    // machine (python3 -m http.server's default port).
    static QString defaultDownloadUrl();

    // For the test, which clicks these and reads what they show.
    QPushButton *startButton() const { return m_start; }
    QPushButton *downloadButton() const { return m_download; }
    QPushButton *cancelButton() const { return m_cancel; }
    QLineEdit *urlEdit() const { return m_url; }
    QProgressBar *progressBar() const { return m_progress; }
    QLabel *statusLabel() const { return m_status; }
    // The body of the last download that completed.
    const QByteArray &downloaded() const { return m_downloaded; }

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
    // Emitted from the callbacks, hence on the GUI thread. For a download: bytes
    // received, of the Content-Length (0 when the server did not send one).
    void progressReported(quint64 done, quint64 total);
    void finished(const QString &status);

private slots:
    void start();
    void download();
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

    // Watches a future just made: its callbacks go to the queue. Takes the reference.
    bool watch(future_t *future);
    void setRunning(bool running);

    bridge_t *m_bridge;
    const int m_steps;
    const int m_stepMs;
    bridge_queue_t *m_queue = nullptr;
    QSocketNotifier *m_notifier = nullptr;
    // The work in flight: one reference, from bridge_submit() or bridge_http_send();
    // null when idle.
    future_t *m_future = nullptr;
    bool m_downloading = false; // m_future is a download
    QByteArray m_downloaded;

    QPushButton *m_start;
    QPushButton *m_download;
    QPushButton *m_cancel;
    QLineEdit *m_url;
    QProgressBar *m_progress;
    QLabel *m_status;
};
