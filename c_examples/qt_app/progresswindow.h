// ProgressWindow: a Qt widget that runs slow, cancellable work on an asyncbridge bridge,
// downloads a URL with the library's HTTP client, or runs a command and shows its output
// line by line as the command writes it; and shows progress and result.
// Written on include/asyncbridge.hpp and include/asyncbridge_qt.hpp (and, for the
// command, the C API of spawned processes and their streams):
//   1. asyncbridge::submit() runs a lambda on the bridge's blocking pool, and
//      asyncbridge::http::get() downloads on the bridge's loop (no thread of its own).
//      Each gives an asyncbridge::Future, kept as a member with cancel_on_drop().
//   2. asyncbridge::qt::on_progress() and qt::then(), with `this` as context, deliver
//      progress and the result through the window's queue on the GUI thread, where they
//      may touch widgets, and only while the window exists.
//   3. The window's asyncbridge::qt::Queue wakes the event loop: a QSocketNotifier on its
//      descriptor, or its notify hook posting a queued call (the Wake mode).
//   4. Run spawns `sh -c <command>` with bridge_process_spawn(), its standard output
//      (and error) a stream: each read is a future whose callback appends the lines that
//      came and asks for the next; bridge_child_wait()'s future says how it ended.
// Closing the window with work in flight needs no code: its futures cancel the work as
// they go (a cancelled wait kills the command's whole process group), its queue drops
// what is pending, and the callbacks' context is gone.
#pragma once

#include <asyncbridge_qt.hpp>

#include <QWidget>

#include <memory>
#include <string_view>

QT_BEGIN_NAMESPACE
class QLabel;
class QLineEdit;
class QPlainTextEdit;
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
    // What the command field holds at first: a few lines, a fifth of a second apart.
    static QString defaultCommand();

    // For the test, which clicks these and reads what they show.
    QPushButton *startButton() const { return m_start; }
    QPushButton *downloadButton() const { return m_download; }
    QPushButton *cancelButton() const { return m_cancel; }
    QLineEdit *urlEdit() const { return m_url; }
    QPushButton *runButton() const { return m_run; }
    QLineEdit *commandEdit() const { return m_command; }
    QPlainTextEdit *outputView() const { return m_output; }
    // The pid of the command Run started, while the window holds it; 0 otherwise.
    int commandPid() const;
    QProgressBar *progressBar() const { return m_progress; }
    QLabel *statusLabel() const { return m_status; }
    // The body of the last download that completed.
    const QByteArray &downloaded() const { return m_downloaded; }

signals:
    // Emitted by the callbacks, so on the GUI thread. For a download: bytes received, of
    // the Content-Length (0 when the server sent none).
    void progressReported(quint64 done, quint64 total);
    void finished(const QString &status);
    // Emitted by the read callbacks, once per line of the command's output.
    void lineReceived(const QString &line);

private:
    void start();
    void download();
    void run();
    void readOutput();
    void takeOutput(std::string_view bytes);
    void showLine(const QByteArray &line);
    void runEnded();
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
    // The command Run started, if any: the program, its output stream, the futures of
    // the pending read and of its end. Each frees itself with the window.
    struct ChildFree {
        void operator()(bridge_child_t *c) const noexcept { bridge_child_free(c); }
    };
    struct StreamClose {
        void operator()(bridge_stream_t *s) const noexcept { bridge_stream_close(s); }
    };
    std::unique_ptr<bridge_child_t, ChildFree> m_child;
    std::unique_ptr<bridge_stream_t, StreamClose> m_childOutput;
    asyncbridge::Future<asyncbridge::Bytes> m_read;
    asyncbridge::Future<asyncbridge::process::Result> m_exit;
    QByteArray m_partialLine; // output after the last newline
    bool m_outputEnded = false;
    QString m_exitStatus; // empty until the command's end is known

    QPushButton *m_start;
    QPushButton *m_download;
    QPushButton *m_cancel;
    QLineEdit *m_url;
    QPushButton *m_run;
    QLineEdit *m_command;
    QPlainTextEdit *m_output;
    QProgressBar *m_progress;
    QLabel *m_status;
};
