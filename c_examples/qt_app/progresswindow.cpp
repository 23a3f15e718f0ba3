#include "progresswindow.h"

#include <QHBoxLayout>
#include <QLabel>
#include <QLineEdit>
#include <QPlainTextEdit>
#include <QProgressBar>
#include <QPushButton>
#include <QVBoxLayout>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>
#include <utility>

namespace qt = asyncbridge::qt;

namespace {

// The status line for a finished future: what `show` makes of its value, or why there is
// none. done.get() does not wait here (the future has finished); it throws the outcome.
template <class T, class Show> QString describe(asyncbridge::Future<T> &done, Show show) {
    try {
        return show(done.get());
    } catch (const asyncbridge::cancelled &) { // and the work has stopped
        return ProgressWindow::tr("cancelled");
    } catch (const std::exception &e) { // asyncbridge::failed: the work's code and message
        return ProgressWindow::tr("failed: %1").arg(QString::fromUtf8(e.what()));
    }
}

} // namespace

QString ProgressWindow::defaultDownloadUrl() {
    const QString fromEnv = qEnvironmentVariable("QT_APP_DOWNLOAD_URL");
    return fromEnv.isEmpty() ? QStringLiteral("http://127.0.0.1:8000/") : fromEnv;
}

QString ProgressWindow::defaultCommand() {
    return QStringLiteral("for i in 1 2 3 4 5; do echo line $i; sleep .2; done; echo end >&2");
}

quint64 ProgressWindow::expectedResult(int steps) {
    const quint64 n = quint64(steps);
    return n * (n + 1) * (2 * n + 1) / 6;
}

ProgressWindow::ProgressWindow(bridge_t *bridge, Wake wake, int steps, int stepMs,
                               QWidget *parent)
    : QWidget(parent), m_bridge(bridge), m_steps(steps), m_stepMs(stepMs),
      m_queue(nullptr, wake), m_start(new QPushButton(tr("Start"))),
      m_download(new QPushButton(tr("Download"))), m_cancel(new QPushButton(tr("Cancel"))),
      m_url(new QLineEdit(defaultDownloadUrl())), m_run(new QPushButton(tr("Run"))),
      m_command(new QLineEdit(defaultCommand())), m_output(new QPlainTextEdit),
      m_progress(new QProgressBar),
      m_status(new QLabel(tr("idle"))) {
    // The queue falls back to the hook when it has no descriptor: say what it does.
    auto *how = new QLabel(m_queue.wake() == Wake::socket_notifier
                               ? tr("delivery: QSocketNotifier on the queue's descriptor")
                               : tr("delivery: the queue's notify hook"));
    how->setEnabled(false); // greyed: a caption, not a status
    m_progress->setRange(0, steps);
    m_progress->setValue(0);
    m_cancel->setEnabled(false);
    m_output->setReadOnly(true);
    m_output->setPlaceholderText(tr("the output of Run's command, as it comes"));
    connect(m_start, &QPushButton::clicked, this, &ProgressWindow::start);
    connect(m_download, &QPushButton::clicked, this, &ProgressWindow::download);
    connect(m_run, &QPushButton::clicked, this, &ProgressWindow::run);
    connect(m_cancel, &QPushButton::clicked, this, &ProgressWindow::cancel);

    auto *buttons = new QHBoxLayout;
    buttons->addStretch();
    buttons->addWidget(m_start);
    buttons->addWidget(m_download);
    buttons->addWidget(m_run);
    buttons->addWidget(m_cancel);
    auto *layout = new QVBoxLayout(this);
    layout->addWidget(how);
    layout->addWidget(m_url);
    layout->addWidget(m_command);
    layout->addWidget(m_output);
    layout->addWidget(m_progress);
    layout->addWidget(m_status);
    layout->addLayout(buttons);

    setWindowTitle(tr("asyncbridge Qt example"));
    resize(420, layout->sizeHint().height());
}

void ProgressWindow::start() {
    // The work runs on the bridge's blocking pool, so the GUI thread never waits for it.
    // It captures copies, never `this`: the window may be gone before the work ends.
    auto work = [steps = m_steps, stepMs = m_stepMs](asyncbridge::Job &job) {
        quint64 sum = 0;
        for (int step = 1; step <= steps; ++step) {
            // Cancellation is cooperative: this throws asyncbridge::cancelled once Cancel
            // was pressed, and the future ends cancelled.
            job.check_cancelled();
            std::this_thread::sleep_for(std::chrono::milliseconds(stepMs));
            sum += quint64(step) * quint64(step);
            job.progress(uint64_t(step), uint64_t(steps)); // cheap, any thread
        }
        return sum; // the future's value
    };
    try {
        // cancel_on_drop(): the window destroyed mid-run stops the work.
        m_work = asyncbridge::submit(m_bridge, std::move(work)).cancel_on_drop();
    } catch (const asyncbridge::error &e) { // the bridge is shut down, or busy
        m_status->setText(tr("could not start: %1").arg(QString::fromUtf8(e.what())));
        return;
    }

    // Both run on the GUI thread, inside m_queue's dispatch, and never once the window is
    // destroyed. Progress is coalesced: a slow GUI thread sees the latest step only.
    qt::on_progress(m_work, m_queue, this, [this](uint64_t done, uint64_t total) {
        m_progress->setRange(0, int(total));
        m_progress->setValue(int(done));
        showProgress(done, total);
    });
    qt::then(m_work, m_queue, this, [this](asyncbridge::Future<quint64> &done) {
        finish(describe(done, [](quint64 sum) { return tr("done: %1").arg(sum); }));
    });
    m_progress->setRange(0, m_steps);
    m_progress->setValue(0);
    m_status->setText(tr("working…"));
    setRunning(true);
}

void ProgressWindow::download() {
    try {
        // On the bridge's loop; BRIDGE_HTTP_FAIL_ON_STATUS makes "404 Not Found" a failure.
        // The body is kept in memory (http::Request::output_path would write a file).
        m_fetch = asyncbridge::http::get(m_bridge, m_url->text().trimmed().toStdString(),
                                         BRIDGE_HTTP_FAIL_ON_STATUS)
                      .cancel_on_drop();
    } catch (const asyncbridge::error &e) { // refused at once: not an http(s) URL
        m_status->setText(tr("cannot download: %1").arg(QString::fromUtf8(e.what())));
        return;
    }
    qt::on_progress(m_fetch, m_queue, this, [this](uint64_t done, uint64_t total) {
        if (total > 0) { // bytes overflow a QProgressBar's int: show per mille
            m_progress->setRange(0, 1000);
            m_progress->setValue(int(done * 1000 / total));
        } else {
            m_progress->setRange(0, 0); // no Content-Length: a busy indicator
        }
        showProgress(done, total);
    });
    qt::then(m_fetch, m_queue, this, [this](asyncbridge::Future<asyncbridge::http::Response> &done) {
        finish(describe(done, [this](asyncbridge::http::ResponseView response) {
            // The view lives as long as `done`: copy what we keep.
            m_downloaded = QByteArray(response.body().data(), qsizetype(response.body().size()));
            m_progress->setRange(0, 1000); // full, also without a Content-Length
            m_progress->setValue(1000);
            return tr("downloaded %1 bytes (HTTP %2)").arg(m_downloaded.size()).arg(response.status());
        }));
    });
    m_downloaded.clear();
    m_progress->setRange(0, 1000);
    m_progress->setValue(0);
    m_status->setText(tr("connecting…"));
    setRunning(true);
}

void ProgressWindow::run() {
    // sh -c runs the line as typed: loops, pipelines, redirections.
    const QByteArray script = m_command->text().toUtf8();
    const char *const args[] = {"-c", script.constData(), nullptr};
    bridge_process_options_t opts;
    bridge_process_options_init(&opts);
    opts.program = "sh";
    opts.argv = args;
    // Standard output is a stream this window reads; standard error goes into it too.
    opts.flags = BRIDGE_PROCESS_PIPE_STDOUT | BRIDGE_PROCESS_MERGE_STDERR;
    bridge_child_t *child = nullptr;
    const bridge_status spawned = bridge_process_spawn(m_bridge, &opts, &child);
    if (spawned != BRIDGE_OK) { // a program that cannot start is refused here, errno says why
        const char *why = spawned == BRIDGE_E_IO ? std::strerror(errno) : bridge_status_str(spawned);
        m_status->setText(tr("could not run: %1").arg(QString::fromUtf8(why)));
        return;
    }
    m_child.reset(child);
    m_childOutput.reset(bridge_child_take_stdout(child));
    m_output->clear();
    m_partialLine.clear();
    m_outputEnded = false;
    m_exitStatus.clear();

    // The end: cancel_on_drop() makes a window destroyed mid-run cancel the wait, which
    // kills the command's whole process group.
    future_t *end = nullptr;
    if (bridge_child_wait(child, &end) == BRIDGE_OK) {
        m_exit = asyncbridge::Future<asyncbridge::process::Result>::adopt(end).cancel_on_drop();
        qt::then(m_exit, m_queue, this, [this](asyncbridge::Future<asyncbridge::process::Result> &done) {
            m_exitStatus = describe(done, [](asyncbridge::process::ResultView result) {
                return result.signal() ? tr("killed by signal %1").arg(result.signal())
                                       : tr("exited with code %1").arg(result.exit_code());
            });
            runEnded();
        });
    } else {
        m_exitStatus = tr("could not wait");
    }
    readOutput();
    m_status->setText(tr("running (pid %1)").arg(bridge_child_pid(child)));
    setRunning(true);
}

void ProgressWindow::readOutput() {
    // One read at a time, each a future; its callback asks for the next.
    future_t *next = nullptr;
    if (bridge_stream_read(m_childOutput.get(), 0, &next) != BRIDGE_OK) { // the bridge stopped
        m_outputEnded = true;
        runEnded();
        return;
    }
    m_read = asyncbridge::Future<asyncbridge::Bytes>::adopt(next).cancel_on_drop();
    qt::then(m_read, m_queue, this, [this](asyncbridge::Future<asyncbridge::Bytes> &done) {
        // 1 to 64 KiB of output; none at its end (or when the read failed).
        const std::string_view bytes =
            done.status() == asyncbridge::state::ok ? done.get() : std::string_view();
        if (bytes.empty()) {
            if (!m_partialLine.isEmpty())
                showLine(std::exchange(m_partialLine, QByteArray()));
            m_outputEnded = true;
            runEnded();
            return;
        }
        takeOutput(bytes);
        readOutput();
    });
}

void ProgressWindow::takeOutput(std::string_view bytes) {
    m_partialLine.append(bytes.data(), qsizetype(bytes.size()));
    qsizetype newline;
    while ((newline = m_partialLine.indexOf('\n')) >= 0) {
        showLine(m_partialLine.left(newline));
        m_partialLine.remove(0, newline + 1);
    }
    if (m_partialLine.size() > 64 * 1024) // a line without end is shown in parts
        showLine(std::exchange(m_partialLine, QByteArray()));
}

void ProgressWindow::showLine(const QByteArray &line) {
    const QString text = QString::fromUtf8(line);
    m_output->appendPlainText(text);
    emit lineReceived(text);
}

void ProgressWindow::runEnded() {
    // Both the output's end and the program's: in either order.
    if (m_outputEnded && !m_exitStatus.isEmpty())
        finish(m_exitStatus);
}

int ProgressWindow::commandPid() const { return m_child ? bridge_child_pid(m_child.get()) : 0; }

void ProgressWindow::cancel() {
    // Only a request (an empty future ignores it): the work stops at its next check, a
    // download drops its connection, and then() says "cancelled" once they have. A
    // command's process group gets SIGKILL: its output ends and its wait says so.
    m_work.cancel();
    m_fetch.cancel();
    if (m_child)
        bridge_child_kill(m_child.get());
    m_cancel->setEnabled(false);
    m_status->setText(tr("cancelling…"));
}

void ProgressWindow::showProgress(quint64 done, quint64 total) {
    if (m_cancel->isEnabled()) { // not while "cancelling…"
        m_status->setText(m_work ? tr("working: step %1 of %2").arg(done).arg(total)
                          : total ? tr("downloading: %1 of %2 bytes").arg(done).arg(total)
                                  : tr("downloading: %1 bytes").arg(done));
    }
    emit progressReported(done, total);
}

void ProgressWindow::finish(const QString &status) {
    if (m_progress->maximum() == 0)
        m_progress->setRange(0, 1000); // stop a busy indicator
    // Done with the run (resetting a finished future cancels nothing).
    m_work.reset();
    m_fetch.reset();
    m_read.reset();
    m_exit.reset();
    m_childOutput.reset();
    m_child.reset();
    setRunning(false);
    m_status->setText(status);
    emit finished(status);
}

void ProgressWindow::setRunning(bool running) {
    m_start->setEnabled(!running);
    m_download->setEnabled(!running);
    m_run->setEnabled(!running);
    m_url->setEnabled(!running);
    m_command->setEnabled(!running);
    m_cancel->setEnabled(running);
}
