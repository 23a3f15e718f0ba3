// QtTest for ProgressWindow, run for both ways of waking the GUI thread (a
// QSocketNotifier on the queue's descriptor, and the queue's notify hook):
//   - Start: progress arrives and increases, the result is shown, the GUI stays
//     responsive, and every callback ran on the GUI thread;
//   - Cancel: the window says "cancelled" once the work has stopped;
//   - destroying the window with work in flight: no callback reaches the dead window,
//     the work is cancelled, nothing crashes while the event loop keeps running;
//   - Download, against a local server the test starts (tests/servers/test_server.py,
//     127.0.0.1 only): the bar moves, the bytes arrive; Cancel mid-download against
//     a slow stream; a 404; the window destroyed with a download in flight;
//   - Run: a command's output lines show while it runs; Cancel kills it; a command run
//     to its end shows every line and its exit code; the window destroyed with a
//     command running kills it;
//   - hundreds of windows opened and destroyed at random points of their work.
// Every callback is audited: the window emits a signal from each, and the windows of
// this test (AuditedWindow) record whether that happened on the GUI thread, on a window
// still alive. It also saves a screenshot (mid-progress above, finished below).
//
// Run with QT_QPA_PLATFORM=offscreen for a headless run (ctest sets it).
#include "progresswindow.h"

#include <QImage>
#include <QMutex>
#include <QMutexLocker>
#include <QRandomGenerator>
#include <QSet>
#include <QLabel>
#include <QLineEdit>
#include <QPainter>
#include <QPointer>
#include <QProgressBar>
#include <QProcess>
#include <QPushButton>
#include <QSignalSpy>
#include <QThread>
#include <QTimer>
#include <QtTest>

#include <QPlainTextEdit>

#include <algorithm>
#include <atomic>
#include <cerrno>

#include <signal.h>

namespace {

constexpr int Steps = 50;                   // the window's default: 50 steps...
constexpr int WaitMs = 15000;               // ...of 20 ms; generous for slow machines

ProgressWindow::Wake deliveryFor(bool notifyHook) {
    return notifyHook ? ProgressWindow::Wake::notify_hook : ProgressWindow::Wake::socket_notifier;
}

// Every callback the windows of this test get, with the promises the example makes.
struct CallbackAudit {
    std::atomic<int> callbacks{0};    // callbacks that ran
    std::atomic<int> offGuiThread{0}; // ... on a thread other than the GUI thread
    std::atomic<int> onDeadWindow{0}; // ... for a window already being destroyed
};
CallbackAudit audit;
QMutex liveLock; // locked: the audit must cope with the very mistake it looks for
QSet<const QObject *> liveWindows;

// A ProgressWindow that is "dead" from the first line of its destruction on: ~AuditedWindow
// runs before ProgressWindow's members (its queue, its futures) are destroyed, so a
// callback run by any of them, or later, is counted, although the window's QPointers are
// cleared only at the very end. Each callback emits a signal; the audit is a direct
// connection to both, so it runs where and when the callback does.
class AuditedWindow : public ProgressWindow {
public:
    explicit AuditedWindow(bridge_t *bridge, Wake wake, int steps = 50, int stepMs = 20)
        : ProgressWindow(bridge, wake, steps, stepMs) {
        {
            QMutexLocker g(&liveLock);
            liveWindows.insert(this);
        }
        connect(this, &ProgressWindow::progressReported, [this] { record(this); });
        connect(this, &ProgressWindow::finished, [this] { record(this); });
        connect(this, &ProgressWindow::lineReceived, [this] { record(this); });
    }
    ~AuditedWindow() override {
        QMutexLocker g(&liveLock);
        liveWindows.remove(this);
    }

private:
    static void record(const QObject *window) {
        ++audit.callbacks;
        if (QThread::currentThread() != qApp->thread())
            ++audit.offGuiThread;
        QMutexLocker g(&liveLock);
        if (!liveWindows.contains(window))
            ++audit.onDeadWindow;
    }
};

bridge_stats_t statsOf(bridge_t *bridge) {
    bridge_stats_t stats{};
    if (bridge_stats(bridge, &stats) != BRIDGE_OK)
        qFatal("bridge_stats failed");
    return stats;
}

// Whether the process `pid` is gone: a child not yet reaped would still answer.
bool processGone(int pid) { return ::kill(pid, 0) == -1 && errno == ESRCH; }

// Where the screenshot goes: QT_APP_SCREENSHOT if set, else the path CMake compiled in.
QString screenshotPath() {
    const QString fromEnv = qEnvironmentVariable("QT_APP_SCREENSHOT");
    return fromEnv.isEmpty() ? QStringLiteral(QT_APP_SCREENSHOT) : fromEnv;
}

// The body /stream sends: byte i is i % 251 (see tests/servers/test_server.py).
QByteArray streamPattern(int size) {
    QByteArray bytes(size, Qt::Uninitialized);
    for (int i = 0; i < size; ++i)
        bytes[i] = char(i % 251);
    return bytes;
}

} // namespace

class TestProgressWindow : public QObject {
    Q_OBJECT

private slots:
    void initTestCase();
    void cleanupTestCase();
    void init();
    void cleanup();

    void completesWithProgressOnGuiThread_data();
    void completesWithProgressOnGuiThread();
    void cancelStopsTheWork_data();
    void cancelStopsTheWork();
    void cancelBeforeTheWorkStarts_data();
    void cancelBeforeTheWorkStarts();
    void destroyedWithWorkInFlight_data();
    void destroyedWithWorkInFlight();
    void downloadShowsProgressAndResult_data();
    void downloadShowsProgressAndResult();
    void cancelStopsTheDownload_data();
    void cancelStopsTheDownload();
    void cancelTheDownloadAtOnce_data();
    void cancelTheDownloadAtOnce();
    void downloadFailureIsShown();
    void startRefusedByAStoppedBridge();
    void destroyedWithDownloadInFlight_data();
    void destroyedWithDownloadInFlight();
    void runShowsOutputWhileItRuns_data();
    void runShowsOutputWhileItRuns();
    void runToItsEnd();
    void destroyedWithACommandRunning_data();
    void destroyedWithACommandRunning();
    void manyWindowsComeAndGo();

private:
    QString serverUrl(const QString &path) const {
        return QStringLiteral("http://127.0.0.1:%1%2").arg(m_serverPort).arg(path);
    }

    static void addDeliveryRows();
    static void saveScreenshot(const QPixmap &midway, const QPixmap &finished);

    bridge_t *m_bridge = nullptr;
    QProcess m_server; // tests/servers/test_server.py
    int m_serverPort = 0;
    int m_callbacksBefore = 0;
    int m_offGuiThreadBefore = 0;
    int m_onDeadWindowBefore = 0;
};

void TestProgressWindow::initTestCase() {
    QCOMPARE(bridge_start(nullptr, &m_bridge), BRIDGE_OK);

    // The local server of the download tests: it prints "port N" once it listens on
    // 127.0.0.1, and stops when its stdin closes, should this process die first.
    m_server.setProcessChannelMode(QProcess::ForwardedErrorChannel);
    m_server.start(QStringLiteral("python3"), {QStringLiteral(QT_APP_TEST_SERVER),
                                               QStringLiteral("--until-stdin-closes")});
    QVERIFY2(m_server.waitForStarted(WaitMs), qPrintable(m_server.errorString()));
    while (!m_server.canReadLine())
        QVERIFY2(m_server.waitForReadyRead(WaitMs), "the test server said nothing");
    const QByteArray line = m_server.readLine().trimmed();
    QVERIFY2(line.startsWith("port "), line.constData());
    m_serverPort = line.mid(5).toInt();
    QVERIFY(m_serverPort > 0);
}

void TestProgressWindow::cleanupTestCase() {
    m_server.kill();
    m_server.waitForFinished(WaitMs);
    QCOMPARE(statsOf(m_bridge).pending, uint64_t{0}); // no work left behind by any test
    QCOMPARE(bridge_shutdown(m_bridge, 5000), BRIDGE_OK);
    bridge_free(m_bridge);
}

void TestProgressWindow::init() {
    m_callbacksBefore = audit.callbacks;
    m_offGuiThreadBefore = audit.offGuiThread;
    m_onDeadWindowBefore = audit.onDeadWindow;
}

// After every test: each callback of that test ran on the GUI thread, and none was
// handed a window that had already been destroyed.
void TestProgressWindow::cleanup() {
    qInfo("callbacks run: %d", audit.callbacks - m_callbacksBefore);
    QCOMPARE(audit.offGuiThread - m_offGuiThreadBefore, 0);
    QCOMPARE(audit.onDeadWindow - m_onDeadWindowBefore, 0);
}

void TestProgressWindow::addDeliveryRows() {
    QTest::addColumn<bool>("notifyHook");
    QTest::newRow("socket-notifier") << false;
    QTest::newRow("notify-hook") << true;
}

void TestProgressWindow::completesWithProgressOnGuiThread_data() { addDeliveryRows(); }

void TestProgressWindow::completesWithProgressOnGuiThread() {
    QFETCH(bool, notifyHook);
    AuditedWindow window(m_bridge, deliveryFor(notifyHook));
    window.show();
    QVERIFY(QTest::qWaitForWindowExposed(&window));
    QSignalSpy progress(&window, &ProgressWindow::progressReported);
    QSignalSpy finished(&window, &ProgressWindow::finished);

    // Responsiveness: a 10 ms timer keeps ticking while the work runs, because the
    // work is on the bridge's blocking pool and the GUI thread never waits for it.
    QElapsedTimer sinceTick;
    qint64 longestGapMs = 0;
    QTimer ticker;
    ticker.setInterval(10);
    connect(&ticker, &QTimer::timeout, &ticker,
            [&] { longestGapMs = std::max(longestGapMs, sinceTick.restart()); });

    QElapsedTimer clicking;
    clicking.start();
    QTest::mouseClick(window.startButton(), Qt::LeftButton);
    const qint64 clickMs = clicking.elapsed();
    QVERIFY2(clickMs < 250, qPrintable(QStringLiteral("Start took %1 ms").arg(clickMs)));
    QVERIFY(!window.startButton()->isEnabled());
    QVERIFY(window.cancelButton()->isEnabled());
    sinceTick.start();
    ticker.start();

    // The mid-progress picture is taken by the first progress callback past half-way
    // (usually exactly half-way, so the saved screenshot rarely changes between runs).
    QPixmap midway;
    connect(&window, &ProgressWindow::progressReported, &window, [&](quint64 doneSteps) {
        if (midway.isNull() && doneSteps >= quint64(Steps / 2))
            midway = window.grab();
    });

    const QString expected =
        QStringLiteral("done: %1").arg(ProgressWindow::expectedResult(Steps));
    QTRY_COMPARE_WITH_TIMEOUT(window.statusLabel()->text(), expected, WaitMs);
    ticker.stop();
    const QPixmap done = window.grab();
    QVERIFY(!midway.isNull());

    QCOMPARE(finished.count(), 1);
    QCOMPARE(finished.at(0).at(0).toString(), expected);
    QCOMPARE(window.progressBar()->value(), Steps);
    QVERIFY(window.startButton()->isEnabled());
    QVERIFY(!window.cancelButton()->isEnabled());

    // Progress arrived, several times, always increasing (coalescing may skip values,
    // never reorder them), and never after the done callback.
    QVERIFY2(progress.count() >= 3,
             qPrintable(QStringLiteral("%1 progress callbacks").arg(progress.count())));
    quint64 last = 0;
    for (const QList<QVariant> &report : std::as_const(progress)) {
        const quint64 doneSteps = report.at(0).toULongLong();
        QCOMPARE(report.at(1).toULongLong(), quint64(Steps));
        QVERIFY2(doneSteps > last, qPrintable(QStringLiteral("%1 after %2").arg(doneSteps).arg(last)));
        last = doneSteps;
    }
    QVERIFY(last <= quint64(Steps));
    qInfo("progress callbacks: %lld, last at step %llu; longest GUI stall %lld ms",
          qlonglong(progress.count()), qulonglong(last), qlonglong(longestGapMs));
    QVERIFY2(longestGapMs < 500,
             qPrintable(QStringLiteral("GUI thread stalled %1 ms").arg(longestGapMs)));

    QTest::qWait(100); // nothing else arrives after the done callback
    QCOMPARE(finished.count(), 1);
    QVERIFY(audit.callbacks - m_callbacksBefore == progress.count() + 1);

    if (!notifyHook)
        saveScreenshot(midway, done);
}

void TestProgressWindow::cancelStopsTheWork_data() { addDeliveryRows(); }

void TestProgressWindow::cancelStopsTheWork() {
    QFETCH(bool, notifyHook);
    const bridge_stats_t before = statsOf(m_bridge);
    AuditedWindow window(m_bridge, deliveryFor(notifyHook));
    window.show();
    QVERIFY(QTest::qWaitForWindowExposed(&window));
    QSignalSpy finished(&window, &ProgressWindow::finished);

    QTest::mouseClick(window.startButton(), Qt::LeftButton);
    QTRY_VERIFY_WITH_TIMEOUT(window.progressBar()->value() >= 5, WaitMs);
    QTest::mouseClick(window.cancelButton(), Qt::LeftButton);
    // future_cancel() only asks; the work is still running until it looks.
    QCOMPARE(window.statusLabel()->text(), QStringLiteral("cancelling…"));
    QVERIFY(!window.cancelButton()->isEnabled());

    QTRY_COMPARE_WITH_TIMEOUT(window.statusLabel()->text(), QStringLiteral("cancelled"), WaitMs);
    QCOMPARE(finished.count(), 1);
    QVERIFY(window.progressBar()->value() < Steps);
    QVERIFY(window.startButton()->isEnabled());
    // The done callback saw BRIDGE_CANCELLED, which means the work has returned.
    const bridge_stats_t after = statsOf(m_bridge);
    QCOMPARE(after.cancelled, before.cancelled + 1);
    QCOMPARE(after.pending, uint64_t{0});
}

void TestProgressWindow::cancelBeforeTheWorkStarts_data() { addDeliveryRows(); }

// Start and Cancel with no event processing between them: if the pool has not picked
// the work up yet, future_cancel() finishes the future right there on the GUI thread
// (and the notify hook, if any, is called on the GUI thread). Either way the done
// callback still comes through the queue.
void TestProgressWindow::cancelBeforeTheWorkStarts() {
    QFETCH(bool, notifyHook);
    AuditedWindow window(m_bridge, deliveryFor(notifyHook));
    window.show();
    QVERIFY(QTest::qWaitForWindowExposed(&window));
    QSignalSpy finished(&window, &ProgressWindow::finished);

    window.startButton()->click();
    window.cancelButton()->click();
    QTRY_COMPARE_WITH_TIMEOUT(window.statusLabel()->text(), QStringLiteral("cancelled"), WaitMs);
    QCOMPARE(finished.count(), 1);
    QVERIFY(window.startButton()->isEnabled());
}

void TestProgressWindow::destroyedWithWorkInFlight_data() {
    QTest::addColumn<bool>("notifyHook");
    QTest::addColumn<bool>("closeIt");
    QTest::newRow("socket-notifier, delete") << false << false;
    QTest::newRow("socket-notifier, close") << false << true;
    QTest::newRow("notify-hook, delete") << true << false;
    QTest::newRow("notify-hook, close") << true << true;
}

void TestProgressWindow::destroyedWithWorkInFlight() {
    QFETCH(bool, notifyHook);
    QFETCH(bool, closeIt);
    const bridge_stats_t before = statsOf(m_bridge);
    auto *window = new AuditedWindow(m_bridge, deliveryFor(notifyHook));
    window->setAttribute(Qt::WA_DeleteOnClose, closeIt);
    const QPointer<AuditedWindow> alive(window);
    window->show();
    QVERIFY(QTest::qWaitForWindowExposed(window));

    QTest::mouseClick(window->startButton(), Qt::LeftButton);
    QTRY_VERIFY_WITH_TIMEOUT(window->progressBar()->value() >= 3, WaitMs);
    // Keep the GUI thread busy for a few steps, so progress deliveries are waiting in
    // the queue when the window goes: the window's queue, destroyed with it, must drop
    // them rather than run them on the half-destroyed window.
    QThread::msleep(100);
    if (closeIt) {
        window->close(); // Qt::WA_DeleteOnClose: deleteLater(), from the event loop
        QTRY_VERIFY_WITH_TIMEOUT(alive.isNull(), WaitMs);
    } else {
        delete window;
    }
    window = nullptr;

    // Keep the event loop running for longer than the work would have taken: no late
    // callback, no crash. The destructor cancelled the work, so it stopped early.
    QTest::qWait(Steps * 20 + 500);
    const bridge_stats_t after = statsOf(m_bridge);
    QCOMPARE(after.pending, uint64_t{0});
    QCOMPARE(after.cancelled, before.cancelled + 1);
    QCOMPARE(after.completed, before.completed);
}

void TestProgressWindow::downloadShowsProgressAndResult_data() { addDeliveryRows(); }

void TestProgressWindow::downloadShowsProgressAndResult() {
    QFETCH(bool, notifyHook);
    // 2 MiB in 64 chunks, 10 ms apart: long enough for several progress reports.
    constexpr int Size = 2 * 1024 * 1024;
    AuditedWindow window(m_bridge, deliveryFor(notifyHook));
    window.show();
    QVERIFY(QTest::qWaitForWindowExposed(&window));
    QSignalSpy progress(&window, &ProgressWindow::progressReported);
    QSignalSpy finished(&window, &ProgressWindow::finished);
    QList<int> barValues;
    connect(&window, &ProgressWindow::progressReported, &window,
            [&] { barValues.append(window.progressBar()->value()); });

    window.urlEdit()->setText(serverUrl(QStringLiteral("/stream?size=%1&chunk=32768&delay_ms=10").arg(Size)));
    QTest::mouseClick(window.downloadButton(), Qt::LeftButton);
    QVERIFY(!window.downloadButton()->isEnabled());
    QVERIFY(!window.startButton()->isEnabled());
    QVERIFY(window.cancelButton()->isEnabled());

    const QString expected = QStringLiteral("downloaded %1 bytes (HTTP 200)").arg(Size);
    QTRY_COMPARE_WITH_TIMEOUT(window.statusLabel()->text(), expected, WaitMs);
    QCOMPARE(finished.count(), 1);
    QCOMPARE(window.downloaded().size(), Size);
    QVERIFY(window.downloaded() == streamPattern(Size));
    QCOMPARE(window.progressBar()->value(), window.progressBar()->maximum());
    QVERIFY(window.downloadButton()->isEnabled());
    QVERIFY(!window.cancelButton()->isEnabled());

    // Bytes of the Content-Length, increasing (the first report may say 0: the
    // headers are in, with the total); the bar moved along with them.
    QVERIFY2(progress.count() >= 3,
             qPrintable(QStringLiteral("%1 progress callbacks").arg(progress.count())));
    quint64 last = 0;
    for (qsizetype i = 0; i < progress.count(); ++i) {
        const quint64 bytes = progress.at(i).at(0).toULongLong();
        QCOMPARE(progress.at(i).at(1).toULongLong(), quint64(Size));
        QVERIFY2(bytes > last || (i == 0 && bytes == 0),
                 qPrintable(QStringLiteral("%1 after %2").arg(bytes).arg(last)));
        last = bytes;
    }
    QVERIFY(last <= quint64(Size));
    QVERIFY2(std::is_sorted(barValues.begin(), barValues.end()) &&
                 barValues.first() < barValues.last(),
             "the progress bar did not move forward");
    QTest::qWait(100); // nothing else arrives after the done callback
    QCOMPARE(finished.count(), 1);
}

void TestProgressWindow::cancelStopsTheDownload_data() { addDeliveryRows(); }

void TestProgressWindow::cancelStopsTheDownload() {
    QFETCH(bool, notifyHook);
    const bridge_stats_t before = statsOf(m_bridge);
    AuditedWindow window(m_bridge, deliveryFor(notifyHook));
    window.show();
    QVERIFY(QTest::qWaitForWindowExposed(&window));
    QSignalSpy progress(&window, &ProgressWindow::progressReported);
    QSignalSpy finished(&window, &ProgressWindow::finished);

    // 64 MiB at 16 KiB every 20 ms: over a minute, unless cancelled.
    window.urlEdit()->setText(serverUrl(QStringLiteral("/stream?size=67108864&chunk=16384&delay_ms=20")));
    QTest::mouseClick(window.downloadButton(), Qt::LeftButton);
    QTRY_VERIFY_WITH_TIMEOUT(window.progressBar()->value() > 0, WaitMs);
    QTest::mouseClick(window.cancelButton(), Qt::LeftButton);
    QCOMPARE(window.statusLabel()->text(), QStringLiteral("cancelling…"));

    QTRY_COMPARE_WITH_TIMEOUT(window.statusLabel()->text(), QStringLiteral("cancelled"), WaitMs);
    QCOMPARE(finished.count(), 1);
    QVERIFY(window.progressBar()->value() < window.progressBar()->maximum());
    QVERIFY(window.downloaded().isEmpty());
    QVERIFY(window.downloadButton()->isEnabled());
    const bridge_stats_t after = statsOf(m_bridge);
    QCOMPARE(after.cancelled, before.cancelled + 1);
    QCOMPARE(after.pending, uint64_t{0});
}

void TestProgressWindow::cancelTheDownloadAtOnce_data() { addDeliveryRows(); }

// Download and Cancel with no event processing between them: the request may not have
// left yet. The done callback still comes through the queue, saying "cancelled".
void TestProgressWindow::cancelTheDownloadAtOnce() {
    QFETCH(bool, notifyHook);
    const bridge_stats_t before = statsOf(m_bridge);
    AuditedWindow window(m_bridge, deliveryFor(notifyHook));
    window.show();
    QVERIFY(QTest::qWaitForWindowExposed(&window));
    QSignalSpy finished(&window, &ProgressWindow::finished);

    window.urlEdit()->setText(serverUrl(QStringLiteral("/stream?size=67108864&chunk=16384&delay_ms=20")));
    window.downloadButton()->click();
    window.cancelButton()->click();
    QTRY_COMPARE_WITH_TIMEOUT(window.statusLabel()->text(), QStringLiteral("cancelled"), WaitMs);
    QCOMPARE(finished.count(), 1);
    QVERIFY(window.downloadButton()->isEnabled());
    const bridge_stats_t after = statsOf(m_bridge);
    QCOMPARE(after.cancelled, before.cancelled + 1);
    QCOMPARE(after.pending, uint64_t{0});
}

void TestProgressWindow::downloadFailureIsShown() {
    AuditedWindow window(m_bridge, ProgressWindow::Wake::socket_notifier);
    window.show();
    QVERIFY(QTest::qWaitForWindowExposed(&window));
    QSignalSpy finished(&window, &ProgressWindow::finished);

    window.urlEdit()->setText(serverUrl(QStringLiteral("/no/such/thing")));
    QTest::mouseClick(window.downloadButton(), Qt::LeftButton);
    QTRY_COMPARE_WITH_TIMEOUT(finished.count(), 1, WaitMs);
    const QString text = window.statusLabel()->text();
    QVERIFY2(text.startsWith(QStringLiteral("failed: ")) && text.contains(QStringLiteral("404")),
             qPrintable(text));
    QVERIFY(window.downloadButton()->isEnabled());

    // Not a URL at all: refused at once, nothing starts.
    window.urlEdit()->setText(QStringLiteral("no scheme here"));
    QTest::mouseClick(window.downloadButton(), Qt::LeftButton);
    QVERIFY2(window.statusLabel()->text().startsWith(QStringLiteral("cannot download: ")),
             qPrintable(window.statusLabel()->text()));
    QVERIFY(window.downloadButton()->isEnabled());
    QCOMPARE(finished.count(), 1);
}

// A bridge that no longer accepts work: Start and Download say so, and nothing runs.
void TestProgressWindow::startRefusedByAStoppedBridge() {
    asyncbridge::Bridge stopped;
    QVERIFY(stopped.shutdown());
    AuditedWindow window(stopped, ProgressWindow::Wake::socket_notifier);
    window.startButton()->click();
    QVERIFY2(window.statusLabel()->text().startsWith(QStringLiteral("could not start: ")),
             qPrintable(window.statusLabel()->text()));
    QVERIFY(window.startButton()->isEnabled());
    window.urlEdit()->setText(serverUrl(QStringLiteral("/stream")));
    window.downloadButton()->click();
    QVERIFY2(window.statusLabel()->text().startsWith(QStringLiteral("cannot download: ")),
             qPrintable(window.statusLabel()->text()));
    window.runButton()->click();
    QVERIFY2(window.statusLabel()->text().startsWith(QStringLiteral("could not run: ")),
             qPrintable(window.statusLabel()->text()));
    QCOMPARE(window.commandPid(), 0);
    QVERIFY(!window.cancelButton()->isEnabled());
}

void TestProgressWindow::destroyedWithDownloadInFlight_data() {
    QTest::addColumn<bool>("notifyHook");
    QTest::newRow("socket-notifier") << false;
    QTest::newRow("notify-hook") << true;
}

// Closing the window in the middle of a download: the download is cancelled (its
// connection dropped), no callback reaches the dead window.
void TestProgressWindow::destroyedWithDownloadInFlight() {
    QFETCH(bool, notifyHook);
    const bridge_stats_t before = statsOf(m_bridge);
    auto *window = new AuditedWindow(m_bridge, deliveryFor(notifyHook));
    window->setAttribute(Qt::WA_DeleteOnClose, true);
    const QPointer<AuditedWindow> alive(window);
    window->show();
    QVERIFY(QTest::qWaitForWindowExposed(window));

    window->urlEdit()->setText(serverUrl(QStringLiteral("/stream?size=67108864&chunk=16384&delay_ms=20")));
    QTest::mouseClick(window->downloadButton(), Qt::LeftButton);
    QTRY_VERIFY_WITH_TIMEOUT(window->progressBar()->value() > 0, WaitMs);
    QThread::msleep(100); // progress deliveries wait in the queue as the window goes
    window->close();
    QTRY_VERIFY_WITH_TIMEOUT(alive.isNull(), WaitMs);
    window = nullptr;

    // The cancelled download ends once its connection is closed.
    QTRY_COMPARE_WITH_TIMEOUT(statsOf(m_bridge).pending, uint64_t{0}, WaitMs);
    const bridge_stats_t after = statsOf(m_bridge);
    QCOMPARE(after.cancelled, before.cancelled + 1);
    QCOMPARE(after.completed, before.completed);
    QTest::qWait(200); // no late callback
}

void TestProgressWindow::runShowsOutputWhileItRuns_data() { addDeliveryRows(); }

// A command that prints two lines (one on stderr) and then sleeps until killed: the lines
// can only have come while it ran. Cancel kills it, and the window says how it ended
// once the command was reaped.
void TestProgressWindow::runShowsOutputWhileItRuns() {
    QFETCH(bool, notifyHook);
    AuditedWindow window(m_bridge, deliveryFor(notifyHook));
    window.show();
    QVERIFY(QTest::qWaitForWindowExposed(&window));
    QSignalSpy lines(&window, &ProgressWindow::lineReceived);
    QSignalSpy finished(&window, &ProgressWindow::finished);

    window.commandEdit()->setText(QStringLiteral("echo first; echo second >&2; sleep 100"));
    QTest::mouseClick(window.runButton(), Qt::LeftButton);
    const int pid = window.commandPid();
    QVERIFY(pid > 0);
    QVERIFY2(window.statusLabel()->text().startsWith(QStringLiteral("running (pid ")),
             qPrintable(window.statusLabel()->text()));
    QVERIFY(!window.runButton()->isEnabled() && !window.startButton()->isEnabled());
    QVERIFY(window.cancelButton()->isEnabled());

    QTRY_COMPARE_WITH_TIMEOUT(lines.count(), 2, WaitMs);
    QCOMPARE(window.outputView()->toPlainText(), QStringLiteral("first\nsecond"));
    QCOMPARE(finished.count(), 0);
    QVERIFY(!processGone(pid));

    QTest::mouseClick(window.cancelButton(), Qt::LeftButton);
    QTRY_COMPARE_WITH_TIMEOUT(window.statusLabel()->text(), QStringLiteral("killed by signal 9"), WaitMs);
    QCOMPARE(finished.count(), 1);
    QVERIFY(processGone(pid)); // reaped before the wait ended
    QCOMPARE(window.commandPid(), 0);
    QVERIFY(window.runButton()->isEnabled());
    QVERIFY(!window.cancelButton()->isEnabled());
    QCOMPARE(lines.count(), 2);
}

// The default command to its end (five lines a fifth of a second apart, one on stderr),
// then one whose last line has no newline and whose exit code is not 0.
void TestProgressWindow::runToItsEnd() {
    AuditedWindow window(m_bridge, ProgressWindow::Wake::socket_notifier);
    window.show();
    QVERIFY(QTest::qWaitForWindowExposed(&window));
    QSignalSpy lines(&window, &ProgressWindow::lineReceived);
    QSignalSpy finished(&window, &ProgressWindow::finished);

    QCOMPARE(window.commandEdit()->text(), ProgressWindow::defaultCommand());
    QTest::mouseClick(window.runButton(), Qt::LeftButton);
    QTRY_COMPARE_WITH_TIMEOUT(finished.count(), 1, WaitMs);
    QCOMPARE(window.statusLabel()->text(), QStringLiteral("exited with code 0"));
    QCOMPARE(window.outputView()->toPlainText(),
             QStringLiteral("line 1\nline 2\nline 3\nline 4\nline 5\nend"));
    QCOMPARE(lines.count(), 6);

    window.commandEdit()->setText(QStringLiteral("printf 'one\\ntwo\\n'; echo three >&2; printf 'no newline'; exit 2"));
    QTest::mouseClick(window.runButton(), Qt::LeftButton);
    QTRY_COMPARE_WITH_TIMEOUT(finished.count(), 2, WaitMs);
    QCOMPARE(window.statusLabel()->text(), QStringLiteral("exited with code 2"));
    QCOMPARE(window.outputView()->toPlainText(), QStringLiteral("one\ntwo\nthree\nno newline"));
    QCOMPARE(lines.count(), 10);
    QVERIFY(window.runButton()->isEnabled());
}

void TestProgressWindow::destroyedWithACommandRunning_data() { addDeliveryRows(); }

// The window goes while its command runs: the cancelled wait kills the command's group
// and the bridge reaps it; no callback reaches the dead window.
void TestProgressWindow::destroyedWithACommandRunning() {
    QFETCH(bool, notifyHook);
    auto *window = new AuditedWindow(m_bridge, deliveryFor(notifyHook));
    window->show();
    QVERIFY(QTest::qWaitForWindowExposed(window));
    window->commandEdit()->setText(QStringLiteral("echo started; sleep 100"));
    QTest::mouseClick(window->runButton(), Qt::LeftButton);
    const int pid = window->commandPid();
    QVERIFY(pid > 0);
    QTRY_COMPARE_WITH_TIMEOUT(window->outputView()->toPlainText(), QStringLiteral("started"), WaitMs);
    delete window;
    window = nullptr;

    QTRY_VERIFY_WITH_TIMEOUT(processGone(pid), WaitMs);
    QTRY_COMPARE_WITH_TIMEOUT(statsOf(m_bridge).pending, uint64_t{0}, WaitMs);
    QTest::qWait(100); // no late callback
}

// Hundreds of windows, each destroyed at a random point of its work (a short computation,
// or a small download): before it starts, mid-progress, with deliveries queued, after it
// ended; deleted at once or from the event loop. The audit (cleanup()) sees no callback on
// a dead window or off the GUI thread; every run ends, completed or cancelled.
void TestProgressWindow::manyWindowsComeAndGo() {
    constexpr int Rounds = 300;
    const bridge_stats_t before = statsOf(m_bridge);
    QRandomGenerator random(4242);
    for (int round = 0; round < Rounds; ++round) {
        auto *window = new AuditedWindow(m_bridge, deliveryFor(round % 2), 5, 2);
        if (round % 4 == 3) {
            window->urlEdit()->setText(serverUrl(QStringLiteral("/stream?size=65536&chunk=4096&delay_ms=1")));
            window->downloadButton()->click();
        } else {
            window->startButton()->click();
        }
        switch (random.bounded(4)) {
        case 0: break;
        case 1: QCoreApplication::processEvents(); break;
        case 2: QThread::msleep(random.bounded(8)); break; // deliveries queue up meanwhile
        default: QTest::qWait(int(random.bounded(15))); break;
        }
        if (random.bounded(2))
            delete window;
        else
            window->deleteLater();
    }
    QTRY_COMPARE_WITH_TIMEOUT(statsOf(m_bridge).pending, uint64_t{0}, WaitMs);
    const bridge_stats_t after = statsOf(m_bridge);
    QCOMPARE(after.submitted - before.submitted, uint64_t(Rounds));
    QCOMPARE((after.completed - before.completed) + (after.cancelled - before.cancelled), uint64_t(Rounds));
    QTest::qWait(50); // no late callback
}

// Mid-progress above, finished below, on the window's own background.
void TestProgressWindow::saveScreenshot(const QPixmap &midway, const QPixmap &finished) {
    const int gap = 6;
    QImage image(std::max(midway.width(), finished.width()),
                 midway.height() + gap + finished.height(), QImage::Format_RGB32);
    image.fill(QColor(0x80, 0x80, 0x80));
    {
        QPainter painter(&image);
        painter.drawPixmap(0, 0, midway);
        painter.drawPixmap(0, midway.height() + gap, finished);
    }
    const QString path = screenshotPath();
    QVERIFY2(image.save(path, "PNG"), qPrintable(QStringLiteral("cannot write %1").arg(path)));
    qInfo("screenshot: %s", qPrintable(path));
}

QTEST_MAIN(TestProgressWindow)
#include "tst_progresswindow.moc"
