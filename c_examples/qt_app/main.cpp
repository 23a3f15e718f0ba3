// A Qt Widgets application on asyncbridge: press Start, and slow work runs on the
// bridge's blocking pool while the window stays responsive; press Download, and the
// URL in the field is fetched by the library's HTTP client. Progress and result
// arrive as callbacks on the GUI thread. Cancel stops either.
//
//   qt_app            callbacks woken by a QSocketNotifier on the queue's descriptor
//   qt_app --notify   callbacks woken by the queue's notify hook instead
// The URL field starts with $QT_APP_DOWNLOAD_URL, else http://127.0.0.1:8000/ (try
// `python3 -m http.server` in a directory with a large file).
#include "progresswindow.h"

#include <QApplication>
#include <QCommandLineParser>

int main(int argc, char *argv[]) {
    QApplication app(argc, argv);
    QApplication::setApplicationName(QStringLiteral("qt_app"));

    QCommandLineParser parser;
    parser.setApplicationDescription(QStringLiteral("asyncbridge Qt Widgets example"));
    parser.addHelpOption();
    const QCommandLineOption notifyOption(
        QStringLiteral("notify"),
        QStringLiteral("Wake the GUI thread with bridge_queue_set_notify() instead of a "
                       "QSocketNotifier on bridge_queue_fd()."));
    parser.addOption(notifyOption);
    parser.process(app);
    const auto delivery = parser.isSet(notifyOption) ? ProgressWindow::Delivery::NotifyHook
                                                     : ProgressWindow::Delivery::SocketNotifier;

    // The application owns its bridge: started before any window, freed after the
    // last one (bridge_default() would do too, and is never freed).
    bridge_t *bridge = nullptr;
    const bridge_status rc = bridge_start(nullptr, &bridge);
    if (rc != BRIDGE_OK) {
        qCritical("bridge_start: %s", bridge_status_str(rc));
        return 1;
    }

    int exitCode;
    {
        ProgressWindow window(bridge, delivery);
        window.show();
        exitCode = QApplication::exec();
    } // the window is destroyed here: it withdraws its callbacks and cancels its work

    // Give cancelled work a moment to notice (it checks every step; a download drops
    // its connection at once), so nothing is left running behind our back; then free
    // the bridge.
    bridge_shutdown(bridge, 2000);
    bridge_free(bridge);
    return exitCode;
}
