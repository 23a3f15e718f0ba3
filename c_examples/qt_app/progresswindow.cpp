#include "progresswindow.h"

#include <QHBoxLayout>
#include <QLabel>
#include <QLineEdit>
#include <QProgressBar>
#include <QPushButton>
#include <QVBoxLayout>

#include <chrono>
#include <thread>

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

quint64 ProgressWindow::expectedResult(int steps) {
    const quint64 n = quint64(steps);
    return n * (n + 1) * (2 * n + 1) / 6;
}

ProgressWindow::ProgressWindow(bridge_t *bridge, Wake wake, int steps, int stepMs,
                               QWidget *parent)
    : QWidget(parent), m_bridge(bridge), m_steps(steps), m_stepMs(stepMs),
      m_queue(nullptr, wake), m_start(new QPushButton(tr("Start"))),
      m_download(new QPushButton(tr("Download"))), m_cancel(new QPushButton(tr("Cancel"))),
      m_url(new QLineEdit(defaultDownloadUrl())), m_progress(new QProgressBar),
      m_status(new QLabel(tr("idle"))) {
    // The queue falls back to the hook when it has no descriptor: say what it does.
    auto *how = new QLabel(m_queue.wake() == Wake::socket_notifier
                               ? tr("delivery: QSocketNotifier on the queue's descriptor")
                               : tr("delivery: the queue's notify hook"));
    how->setEnabled(false); // greyed: a caption, not a status
    m_progress->setRange(0, steps);
    m_progress->setValue(0);
    m_cancel->setEnabled(false);
    connect(m_start, &QPushButton::clicked, this, &ProgressWindow::start);
    connect(m_download, &QPushButton::clicked, this, &ProgressWindow::download);
    connect(m_cancel, &QPushButton::clicked, this, &ProgressWindow::cancel);

    auto *buttons = new QHBoxLayout;
    buttons->addStretch();
    buttons->addWidget(m_start);
    buttons->addWidget(m_download);
    buttons->addWidget(m_cancel);
    auto *layout = new QVBoxLayout(this);
    layout->addWidget(how);
    layout->addWidget(m_url);
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

void ProgressWindow::cancel() {
    // Only a request (an empty future ignores it): the work stops at its next check, a
    // download drops its connection, and then() says "cancelled" once they have.
    m_work.cancel();
    m_fetch.cancel();
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
    setRunning(false);
    m_status->setText(status);
    emit finished(status);
}

void ProgressWindow::setRunning(bool running) {
    m_start->setEnabled(!running);
    m_download->setEnabled(!running);
    m_url->setEnabled(!running);
    m_cancel->setEnabled(running);
}
