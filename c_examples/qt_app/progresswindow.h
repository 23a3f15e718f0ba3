// ProgressWindow: a Qt widget that runs slow, cancellable work on an asyncbridge bridge,
// or downloads a URL with the library's HTTP client, and shows progress and result.
// Written on include/asyncbridge.hpp and include/asyncbridge_qt.hpp:
//   1. asyncbridge::submit() runs a lambda on the bridge's blocking pool, and
//      asyncbridge::http::get() downloads on the bridge's loop (no thread of its own).
//      Each gives an asyncbridge::Future, kept as a member with cancel_on_drop().
//   2. asyncbridge::qt::on_progress() and qt::then(), with `this` as context, deliver
//      progress and the result through the window's queue on the GUI thread, where they
//      may touch widgets, and only while the window exists.
//   3. The window's asyncbridge::qt::Queue wakes the event loop: a QSocketNotifier on its
//      descriptor, or its notify hook posting a queued call (the Wake mode).
// Closing the window with work in flight needs no code: its futures cancel the work as
// they go, its queue drops what is pending, and the callbacks' context is gone.
#pragma once

#include <asyncbridge_qt.hpp>

#include <QWidget>

QT_BEGIN_NAMESPACE
class QLabel;
class QLineEdit;
class QProgressBar;
class QPushButton;
QT_END_NAMESPACE

class ProgressWindow : public QWidget {
    Q_OBJECT

public:
    // How the event loop learns that callbacks are waiting: socket_notifier watches the
    // queue's descriptor (Unix); notify_hook is called by the library on any thread and
    // posts a queued call (works without a descriptor).
    using Wake = asyncbridge::qt::Wake;

    // The work is `steps` steps of `stepMs` milliseconds. `bridge` must outlive the window.
    explicit ProgressWindow(bridge_t *bridge, Wake wake, int steps = 50, int stepMs = 20,
                            QWidget *parent = nullptr);

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

signals:
    // Emitted by the callbacks, so on the GUI thread. For a download: bytes received, of
    // the Content-Length (0 when the server sent none).
    void progressReported(quint64 done, quint64 total);
    void finished(const QString &status);

private:
    void start();
    void download();
    void cancel();
    void showProgress(quint64 done, quint64 total);
    void finish(const QString &status);
    void setRunning(bool running);

    bridge_t *m_bridge;
    const int m_steps;
    const int m_stepMs;
    asyncbridge::qt::Queue m_queue;
    // The run in flight, if any (at most one of the two is valid).
    asyncbridge::Future<quint64> m_work;
    asyncbridge::Future<asyncbridge::http::Response> m_fetch;
    QByteArray m_downloaded;

    QPushButton *m_start;
    QPushButton *m_download;
    QPushButton *m_cancel;
    QLineEdit *m_url;
    QProgressBar *m_progress;
    QLabel *m_status;
};
