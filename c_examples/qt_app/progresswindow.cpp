#include "progresswindow.h"

#include <QApplication>
#include <QHBoxLayout>
#include <QLabel>
#include <QLineEdit>
#include <QMutex>
#include <QMutexLocker>
#include <QProgressBar>
#include <QPushButton>
#include <QSet>
#include <QSocketNotifier>
#include <QThread>
#include <QVBoxLayout>

#include <cerrno>
#include <chrono>
#include <new>
#include <thread>

namespace {

// ---------------------------------------------------------------------------------
// The work. It runs on the bridge's blocking pool, never on the GUI thread, and it
// touches only its argument and its job: never the window, which may be gone by the
// time the work ends.

struct WorkParams {
    int steps;
    int stepMs;
};

void deleteParams(void *params) { delete static_cast<WorkParams *>(params); }
void deleteResult(void *value) { delete static_cast<quint64 *>(value); }

int32_t sumOfSquaresSlowly(bridge_job_t *job, void *arg) {
    const auto *params = static_cast<const WorkParams *>(arg);
    quint64 sum = 0;
    for (int step = 1; step <= params->steps; ++step) {
        // Cancellation is cooperative: future_cancel() raises a flag that running
        // work has to look at. Whatever the work returns then, the future ends
        // BRIDGE_CANCELLED, and only once the work has returned.
        if (bridge_job_is_cancelled(job))
            return 0;
        std::this_thread::sleep_for(std::chrono::milliseconds(params->stepMs));
        sum += quint64(step) * quint64(step);
        // Cheap and thread-safe; the window hears about it through its queue.
        bridge_job_set_progress(job, uint64_t(step), uint64_t(params->steps));
    }
    // Work is called as a C function: nothing may throw out of it, hence nothrow.
    auto *result = new (std::nothrow) quint64(sum);
    if (!result)
        return bridge_job_fail(job, ENOMEM, "out of memory");
    bridge_job_set_value(job, result, deleteResult); // the future owns it now
    return 0;
}

// ---------------------------------------------------------------------------------
// The windows alive right now, for the audit only: it lets a callback notice that it
// was handed a destroyed window without touching it. Locked, because the audit must
// also cope with the very mistake it looks for: a callback on another thread.

QMutex &liveMutex() {
    static QMutex mutex;
    return mutex;
}

QSet<const void *> &liveWindows() {
    static QSet<const void *> windows;
    return windows;
}

} // namespace

ProgressWindow::CallbackAudit &ProgressWindow::audit() {
    static CallbackAudit counters;
    return counters;
}

QString ProgressWindow::defaultDownloadUrl() {
    const QString fromEnv = qEnvironmentVariable("QT_APP_DOWNLOAD_URL");
    return fromEnv.isEmpty() ? QStringLiteral("http://127.0.0.1:8000/") : fromEnv;
}

quint64 ProgressWindow::expectedResult(int steps) {
    const quint64 n = quint64(steps);
    return n * (n + 1) * (2 * n + 1) / 6;
}

ProgressWindow::ProgressWindow(bridge_t *bridge, Delivery delivery, int steps, int stepMs,
                               QWidget *parent)
    : QWidget(parent), m_bridge(bridge), m_steps(steps),
      m_stepMs(stepMs), m_start(new QPushButton(tr("Start"))),
      m_download(new QPushButton(tr("Download"))), m_cancel(new QPushButton(tr("Cancel"))),
      m_url(new QLineEdit(defaultDownloadUrl())), m_progress(new QProgressBar),
      m_status(new QLabel(tr("idle"))) {
    {
        QMutexLocker lock(&liveMutex());
        liveWindows().insert(this);
    }

    // One queue per window: its callbacks run where the window lives, and freeing
    // the queue is part of tearing the window down. (An application may just as
    // well share one queue between windows; future_withdraw_via() is what keeps a
    // closing window's callbacks out of it.)
    if (bridge_queue_new(&m_queue) != BRIDGE_OK)
        qFatal("bridge_queue_new failed");

    // The queue's descriptor may be -1 if the process ran out of descriptors; the
    // notify hook works without one.
    const int fd = bridge_queue_fd(m_queue);
    const bool useNotifier = delivery == Delivery::SocketNotifier && fd >= 0;
    if (useNotifier) {
        // Level-triggered: the descriptor stays readable until the queue is drained,
        // so one dispatch of everything pending per activation is all it takes.
        m_notifier = new QSocketNotifier(fd, QSocketNotifier::Read, this);
        connect(m_notifier, &QSocketNotifier::activated, this,
                &ProgressWindow::dispatchCallbacks);
    } else {
        bridge_queue_set_notify(m_queue, &ProgressWindow::notifyHook, this);
    }

    auto *how = new QLabel(useNotifier ? tr("delivery: QSocketNotifier on bridge_queue_fd()")
                                       : tr("delivery: bridge_queue_set_notify() hook"));
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

// Nothing may call back into this window once it is gone, although its work may still
// be running and its callbacks may already be waiting in the queue. The order matters.
// (Destroy the window from the event loop, as close() with Qt::WA_DeleteOnClose or
// deleteLater() do, not from inside one of its own signals: bridge_queue_free() must
// not run inside one of the queue's callbacks.)
ProgressWindow::~ProgressWindow() {
    {
        QMutexLocker lock(&liveMutex());
        liveWindows().remove(this);
    }

    // 1. No more wake-ups naming this window. Once bridge_queue_set_notify() returns,
    //    the old hook is not running and never will again; a call it already posted
    //    is discarded by Qt with the object. The notifier goes before
    //    bridge_queue_free() closes the descriptor it watches.
    bridge_queue_set_notify(m_queue, nullptr, nullptr);
    delete m_notifier;
    m_notifier = nullptr;

    // 2. The work in flight. Withdrawing takes back both callbacks, whether still
    //    registered on the future or already queued; this is the dispatching thread,
    //    so none of them is running right now. Then the result is of no use to anyone:
    //    cancel, so the pool thread is freed early, and drop our reference (releasing
    //    never cancels by itself).
    if (m_future) {
        future_withdraw_via(m_future, m_queue, this);
        future_cancel(m_future);
        future_release(m_future);
        m_future = nullptr;
    }

    // 3. bridge_queue_free() runs whatever is still pending before it frees the
    //    queue; after the withdrawal, nothing of this window's is left in it.
    bridge_queue_free(m_queue);
    m_queue = nullptr;
}

void ProgressWindow::start() {
    if (m_future)
        return; // one run at a time (the button is disabled meanwhile anyway)

    auto *params = new WorkParams{m_steps, m_stepMs};
    future_t *future = nullptr;
    const bridge_status rc = bridge_submit(m_bridge, sumOfSquaresSlowly, params, deleteParams,
                                           BRIDGE_RUN_BLOCKING, &future);
    if (rc != BRIDGE_OK) {
        delete params; // the library takes the argument only on success
        m_status->setText(tr("could not start: %1").arg(QString::fromUtf8(bridge_status_str(rc))));
        return;
    }

    if (!watch(future))
        return;
    m_downloading = false;
    m_progress->setRange(0, m_steps);
    m_progress->setValue(0);
    m_status->setText(tr("working…"));
    setRunning(true);
}

void ProgressWindow::download() {
    if (m_future)
        return;

    // The request is copied by bridge_http_send(): the QByteArray may go right after.
    const QByteArray url = m_url->text().trimmed().toUtf8();
    bridge_http_request_t request;
    bridge_http_request_init(&request);
    request.url = url.constData();
    request.max_redirects = 5;
    request.flags = BRIDGE_HTTP_FAIL_ON_STATUS; // "HTTP 404 Not Found" is a failure
    // The body is kept in memory (up to max_body, 64 MiB by default); set
    // request.output_path to have the library write it to a file instead.
    future_t *future = nullptr;
    const bridge_status rc = bridge_http_send(m_bridge, &request, &future);
    if (rc != BRIDGE_OK) { // BRIDGE_E_INVALID: not an http:// or https:// URL
        m_status->setText(tr("cannot download: %1").arg(QString::fromUtf8(bridge_status_str(rc))));
        return;
    }
    if (!watch(future))
        return;
    m_downloading = true;
    m_downloaded.clear();
    m_progress->setRange(0, 1000); // per mille of the Content-Length, once known
    m_progress->setValue(0);
    m_status->setText(tr("connecting…"));
    setRunning(true);
}

bool ProgressWindow::watch(future_t *future) {
    // Neither callback runs on the thread that reports progress or finishes the work:
    // both wait in m_queue until dispatchCallbacks() runs them on the GUI thread. They
    // are registered with `this` as user data, which is how the destructor finds and
    // withdraws them. Registering after the work started is fine: a done callback on a
    // future that has already finished is queued at once.
    if (future_on_progress_via(future, m_queue, &ProgressWindow::onProgress, this) != BRIDGE_OK ||
        future_on_done_via(future, m_queue, &ProgressWindow::onDone, this) != BRIDGE_OK) {
        future_withdraw_via(future, m_queue, this);
        future_cancel(future);
        future_release(future);
        m_status->setText(tr("could not watch the work"));
        return false;
    }
    m_future = future;
    return true;
}

void ProgressWindow::cancel() {
    if (!m_future)
        return;
    // Only a request: the work notices at its next bridge_job_is_cancelled(), and the
    // future ends BRIDGE_CANCELLED once the work has returned. The done callback says
    // so; until then the work is still running and the window says "cancelling".
    future_cancel(m_future);
    m_cancel->setEnabled(false);
    m_status->setText(tr("cancelling…"));
}

void ProgressWindow::dispatchCallbacks() {
    // 0: run every callback pending now. Those arriving meanwhile wait for the next
    // activation, so a busy stream of progress cannot hold up the event loop.
    bridge_queue_dispatch(m_queue, 0);
}

// Called by the library on whatever thread made the queue non-empty: a pool thread
// reporting progress, the loop thread, or the GUI thread itself when future_cancel()
// finishes a future that had not started. The hook must not block or call into the
// library, so it only posts a call to dispatchCallbacks() to the window's thread.
void ProgressWindow::notifyHook(void *userData) {
    auto *self = static_cast<ProgressWindow *>(userData);
    QMetaObject::invokeMethod(self, &ProgressWindow::dispatchCallbacks, Qt::QueuedConnection);
}

// Every callback starts here: count it for the audit, and find its window.
ProgressWindow *ProgressWindow::windowForCallback(void *userData) {
    CallbackAudit &counters = audit();
    ++counters.callbacks;
    if (QThread::currentThread() != qApp->thread())
        ++counters.offGuiThread;
    QMutexLocker lock(&liveMutex());
    if (!liveWindows().contains(userData)) {
        ++counters.onDeadWindow;
        return nullptr; // never dereference it
    }
    return static_cast<ProgressWindow *>(userData);
}

// Runs inside bridge_queue_dispatch(), i.e. on the GUI thread: widgets may be touched.
void ProgressWindow::onProgress(future_t *, uint64_t done, uint64_t total, void *userData) {
    ProgressWindow *self = windowForCallback(userData);
    if (!self)
        return;
    // Coalesced: if several steps were reported since the last dispatch, this sees
    // only the latest, so a slow GUI thread is never flooded.
    QString text;
    if (!self->m_downloading) {
        self->m_progress->setRange(0, int(total));
        self->m_progress->setValue(int(done));
        text = tr("working: step %1 of %2").arg(done).arg(total);
    } else if (total > 0) {
        // Byte counts overflow a QProgressBar's int: show per mille.
        self->m_progress->setRange(0, 1000);
        self->m_progress->setValue(int(done * 1000 / total));
        text = tr("downloading: %1 of %2 bytes").arg(done).arg(total);
    } else {
        self->m_progress->setRange(0, 0); // no Content-Length: a busy indicator
        text = tr("downloading: %1 bytes").arg(done);
    }
    if (self->m_cancel->isEnabled()) // not while "cancelling…"
        self->m_status->setText(text);
    emit self->progressReported(done, total);
}

// Runs inside bridge_queue_dispatch(), on the GUI thread, exactly once per run.
void ProgressWindow::onDone(future_t *f, void *userData) {
    ProgressWindow *self = windowForCallback(userData);
    if (!self)
        return;
    QString text;
    switch (future_status(f)) {
    case BRIDGE_OK:
        if (future_value_type(f) == BRIDGE_VALUE_HTTP_RESPONSE) {
            // The response and what it hands out live as long as `f`: copy what we keep.
            const auto *response = static_cast<const bridge_http_response_t *>(future_value(f));
            size_t length = 0;
            const uint8_t *body = bridge_http_response_body(response, &length);
            self->m_downloaded = QByteArray(reinterpret_cast<const char *>(body), qsizetype(length));
            text = tr("downloaded %1 bytes (HTTP %2)")
                       .arg(self->m_downloaded.size())
                       .arg(bridge_http_response_status(response));
            self->m_progress->setRange(0, 1000); // also after a busy indicator
        } else if (const auto *result = static_cast<const quint64 *>(future_value(f))) {
            text = tr("done: %1").arg(*result);
        } else {
            text = tr("done");
        }
        // The last progress report may have been skipped (none runs after the work
        // finished), so fill the bar here.
        self->m_progress->setValue(self->m_progress->maximum());
        break;
    case BRIDGE_CANCELLED: // cancelled, and the work has stopped (a download: its
                           // connection is closed)
        text = tr("cancelled");
        if (self->m_progress->maximum() == 0)
            self->m_progress->setRange(0, 1000); // stop the busy indicator
        break;
    default:
        text = tr("failed: %1").arg(QString::fromUtf8(future_error_message(f)));
        break;
    }
    // `f` is borrowed for this call; our own reference has served its purpose. (The
    // delivery holds one of its own, so the result lives until this returns.)
    future_release(self->m_future);
    self->m_future = nullptr;
    self->setRunning(false);
    self->m_status->setText(text);
    emit self->finished(text);
}

void ProgressWindow::setRunning(bool running) {
    m_start->setEnabled(!running);
    m_download->setEnabled(!running);
    m_url->setEnabled(!running);
    m_cancel->setEnabled(running);
}
