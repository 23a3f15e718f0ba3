// QtTest for ProgressWindow, run for both ways of waking the GUI thread (a
// QSocketNotifier on bridge_queue_fd(), and the bridge_queue_set_notify() hook):
//   - Start: progress arrives and increases, the result is shown, the GUI stays
//     responsive, and every callback ran on the GUI thread;
//   - Cancel: the window says "cancelled" once the work has stopped;
//   - destroying the window with work in flight: no callback reaches the dead window,
//     the work is cancelled, nothing crashes while the event loop keeps running.
// It also saves a screenshot (mid-progress above, finished below).
//
// Run with QT_QPA_PLATFORM=offscreen for a headless run (ctest sets it).
#include "progresswindow.h"

#include <QImage>
#include <QLabel>
#include <QPainter>
#include <QPointer>
#include <QProgressBar>
#include <QPushButton>
#include <QSignalSpy>
#include <QThread>
#include <QTimer>
#include <QtTest>

#include <algorithm>

namespace {

constexpr int Steps = 50;                   // the window's default: 50 steps...
constexpr int WaitMs = 15000;               // ...of 20 ms; generous for slow machines

ProgressWindow::Delivery deliveryFor(bool notifyHook) {
    return notifyHook ? ProgressWindow::Delivery::NotifyHook
                      : ProgressWindow::Delivery::SocketNotifier;
}

bridge_stats_t statsOf(bridge_t *bridge) {
    bridge_stats_t stats{};
    if (bridge_stats(bridge, &stats) != BRIDGE_OK)
        qFatal("bridge_stats failed");
    return stats;
}

// Where the screenshot goes: QT_APP_SCREENSHOT if set, else the path CMake compiled in.
QString screenshotPath() {
    const QString fromEnv = qEnvironmentVariable("QT_APP_SCREENSHOT");
    return fromEnv.isEmpty() ? QStringLiteral(QT_APP_SCREENSHOT) : fromEnv;
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

private:
    static void addDeliveryRows();
    static void saveScreenshot(const QPixmap &midway, const QPixmap &finished);

    bridge_t *m_bridge = nullptr;
    int m_callbacksBefore = 0;
    int m_offGuiThreadBefore = 0;
    int m_onDeadWindowBefore = 0;
};

void TestProgressWindow::initTestCase() {
    QCOMPARE(bridge_start(nullptr, &m_bridge), BRIDGE_OK);
}

void TestProgressWindow::cleanupTestCase() {
    QCOMPARE(statsOf(m_bridge).pending, uint64_t{0}); // no work left behind by any test
    QCOMPARE(bridge_shutdown(m_bridge, 5000), BRIDGE_OK);
    bridge_free(m_bridge);
}

void TestProgressWindow::init() {
    const auto &audit = ProgressWindow::audit();
    m_callbacksBefore = audit.callbacks;
    m_offGuiThreadBefore = audit.offGuiThread;
    m_onDeadWindowBefore = audit.onDeadWindow;
}

// After every test: each callback of that test ran on the GUI thread, and none was
// handed a window that had already been destroyed.
void TestProgressWindow::cleanup() {
    const auto &audit = ProgressWindow::audit();
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
    ProgressWindow window(m_bridge, deliveryFor(notifyHook));
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
    QVERIFY(ProgressWindow::audit().callbacks - m_callbacksBefore == progress.count() + 1);

    if (!notifyHook)
        saveScreenshot(midway, done);
}

void TestProgressWindow::cancelStopsTheWork_data() { addDeliveryRows(); }

void TestProgressWindow::cancelStopsTheWork() {
    QFETCH(bool, notifyHook);
    const bridge_stats_t before = statsOf(m_bridge);
    ProgressWindow window(m_bridge, deliveryFor(notifyHook));
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
    ProgressWindow window(m_bridge, deliveryFor(notifyHook));
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
    auto *window = new ProgressWindow(m_bridge, deliveryFor(notifyHook));
    window->setAttribute(Qt::WA_DeleteOnClose, closeIt);
    const QPointer<ProgressWindow> alive(window);
    window->show();
    QVERIFY(QTest::qWaitForWindowExposed(window));

    QTest::mouseClick(window->startButton(), Qt::LeftButton);
    QTRY_VERIFY_WITH_TIMEOUT(window->progressBar()->value() >= 3, WaitMs);
    // Keep the GUI thread busy for a few steps, so progress deliveries are waiting in
    // the queue when the window goes: without its withdrawal, bridge_queue_free()
    // would run them on the half-destroyed window.
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
