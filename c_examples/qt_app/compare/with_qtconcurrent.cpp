// The comparison window on QtConcurrent::run, QPromise and QFutureWatcher: Start runs a 2 s job
// (100 steps of 20 ms summing squares) with a progress bar, Cancel stops it, closing the window
// mid-run stops it too.
#include <QApplication>
#include <QFutureWatcher>
#include <QLabel>
#include <QProgressBar>
#include <QPromise>
#include <QPushButton>
#include <QThread>
#include <QThreadPool>
#include <QVBoxLayout>
#include <QtConcurrent>

static void sumOfSquares(QPromise<quint64> &promise) {
    promise.setProgressRange(0, 100);
    quint64 sum = 0;
    for (int step = 1; step <= 100; ++step) {
        if (promise.isCanceled())
            return;
        QThread::msleep(20);
        sum += quint64(step) * quint64(step);
        promise.setProgressValue(step);
    }
    promise.addResult(sum);
}

class Window : public QWidget {
public:
    Window() {
        auto *layout = new QVBoxLayout(this);
        layout->addWidget(m_bar);
        layout->addWidget(m_label);
        layout->addWidget(m_start);
        layout->addWidget(m_cancel);
        m_bar->setRange(0, 100);
        m_cancel->setEnabled(false);
        connect(m_start, &QPushButton::clicked, this, &Window::start);
        connect(m_cancel, &QPushButton::clicked, this, [this] {
            m_watcher.cancel();
            m_label->setText("cancelling…");
        });
        connect(&m_watcher, &QFutureWatcher<quint64>::progressValueChanged, m_bar,
                &QProgressBar::setValue);
        connect(&m_watcher, &QFutureWatcher<quint64>::finished, this, &Window::finished);
    }
    // The job holds nothing of the window; stop it, and the watcher goes with the window.
    ~Window() override { m_watcher.cancel(); }

private:
    void start() {
        m_bar->setValue(0);
        m_label->setText("working…");
        setRunning(true);
        m_watcher.setFuture(QtConcurrent::run(sumOfSquares));
    }
    void finished() {
        if (m_watcher.isCanceled()) {
            m_label->setText("cancelled");
        } else {
            try {
                m_label->setText(QString("done: %1").arg(m_watcher.result()));
            } catch (const std::exception &e) {
                m_label->setText(QString("failed: %1").arg(e.what()));
            }
        }
        setRunning(false);
    }
    void setRunning(bool running) {
        m_start->setEnabled(!running);
        m_cancel->setEnabled(running);
    }

    QFutureWatcher<quint64> m_watcher;
    QProgressBar *m_bar = new QProgressBar;
    QLabel *m_label = new QLabel("idle");
    QPushButton *m_start = new QPushButton("Start");
    QPushButton *m_cancel = new QPushButton("Cancel");
};

// count-lines: skip
#include "selftest.h" // the self-test, the same for the three versions
// count-lines: end

int main(int argc, char *argv[]) {
    QApplication app(argc, argv);
    // count-lines: skip
    if (app.arguments().contains("--selftest")) {
        return selftest([] { return new Window; },
                        [] { return QThreadPool::globalInstance()->activeThreadCount() == 0; });
    }
    // count-lines: end
    Window window;
    window.show();
    return app.exec();
}
