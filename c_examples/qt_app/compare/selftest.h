// The self-test the three versions of the window share (--selftest): it drives a
// window headless as a user would, and exits 0 only if all went right. Not part of
// the comparison: scripts/count-lines counts the window and its main() only.
#pragma once

#include <QEventLoop>
#include <QLabel>
#include <QProgressBar>
#include <QPushButton>
#include <QTimer>
#include <QWidget>

#include <functional>

static bool waitFor(const std::function<bool()> &done) {
    QEventLoop loop;
    QTimer poll;
    QObject::connect(&poll, &QTimer::timeout, &loop, [&] {
        if (done())
            loop.quit();
    });
    poll.start(5);
    QTimer::singleShot(15000, &loop, [&] { loop.exit(1); }); // a watchdog, not a timing
    return done() || loop.exec() == 0;
}

static int selftest(const std::function<QWidget *()> &makeWindow,
                    const std::function<bool()> &workStopped) {
    const auto fail = [](const char *what) {
        qCritical("selftest failed: %s", what);
        return 1;
    };
    QWidget *window = makeWindow();
    window->show();
    QPushButton *start = nullptr, *cancel = nullptr;
    for (auto *button : window->findChildren<QPushButton *>())
        (button->text() == "Start" ? start : cancel) = button;
    auto *bar = window->findChild<QProgressBar *>();
    auto *label = window->findChild<QLabel *>();

    start->click();
    if (!waitFor([&] { return bar->value() > 0; }))
        return fail("no progress");
    if (!waitFor([&] { return start->isEnabled(); }) || label->text() != "done: 338350" ||
        bar->value() != 100)
        return fail("the first run did not show its result");
    start->click();
    if (bar->value() != 0 || !waitFor([&] { return bar->value() >= 10; }))
        return fail("no progress in the second run");
    cancel->click();
    if (!waitFor([&] { return start->isEnabled(); }) || label->text() != "cancelled")
        return fail("Cancel did not stop the run");
    start->click();
    if (!waitFor([&] { return bar->value() >= 10; }))
        return fail("no progress in the third run");
    delete window; // mid-flight
    // Run the event loop past the time the work would have taken: a callback reaching the
    // dead window would touch freed memory (the AddressSanitizer build reports it).
    QEventLoop loop;
    QTimer::singleShot(2500, &loop, &QEventLoop::quit);
    loop.exec();
    if (!waitFor(workStopped))
        return fail("the work of the closed window did not stop");
    return 0;
}
