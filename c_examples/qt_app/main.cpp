// A Qt Widgets application on asyncbridge.hpp and asyncbridge_qt.hpp: press Start, and slow
// work runs on the bridge's blocking pool while the window stays responsive; press
// Download, and the URL in the field is fetched by the library's HTTP client; press Run,
// and the command line below it runs with its output shown line by line as it comes.
// Progress, output and result arrive as callbacks on the GUI thread. Cancel stops any.
//
//   qt_app            callbacks woken by a QSocketNotifier on the queue's descriptor
//   qt_app --notify   callbacks woken by the queue's notify hook instead
// The URL field starts with $QT_APP_DOWNLOAD_URL, else http://127.0.0.1:8000/ (try
// `python3 -m http.server` in a directory with a large file).
#include "progresswindow.h"

#include <QApplication>
#include <QCommandLineParser>

#include <chrono>

int main(int argc, char *argv[]) {
    QApplication app(argc, argv);
    QApplication::setApplicationName(QStringLiteral("qt_app"));

    QCommandLineParser parser;
    parser.setApplicationDescription(QStringLiteral("asyncbridge Qt Widgets example"));
    parser.addHelpOption();
    const QCommandLineOption notifyOption(
        QStringLiteral("notify"),
        QStringLiteral("Wake the GUI thread with the queue's notify hook instead of a "
                       "QSocketNotifier on its descriptor."));
    parser.addOption(notifyOption);
    parser.process(app);
    const auto wake = parser.isSet(notifyOption) ? ProgressWindow::Wake::notify_hook
                                                 : ProgressWindow::Wake::socket_notifier;

    // The application owns its bridge: started before any window, and destroyed after
    // the last one, as locals are (bridge_default() would do too, and is never freed).
    asyncbridge::Bridge bridge;
    int exitCode;
    {
        ProgressWindow window(bridge, wake);
        window.show();
        exitCode = QApplication::exec();
    } // the window goes here, cancelling what it was running

    // Give cancelled work a moment to notice (it checks every step; a download drops its
    // connection at once), so nothing is cut off mid-step; ~Bridge then frees it.
    bridge.shutdown(std::chrono::seconds(2));
    return exitCode;
}
