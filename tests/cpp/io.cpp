// The I/O wrappers: http::get / post / send against tests/servers/test_server.py, which
// this program starts on 127.0.0.1; process::run; file::read / write in a temporary
// directory removed at the end. get() gives views into the future, take() the owners.
#include "check.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

extern char **environ;

using namespace asyncbridge;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

#ifndef ASYNCBRIDGE_TEST_SERVER
#error "define ASYNCBRIDGE_TEST_SERVER as the path of tests/servers/test_server.py"
#endif
#ifndef ASYNCBRIDGE_TEST_PYTHON
#define ASYNCBRIDGE_TEST_PYTHON "python3"
#endif

namespace {

// tests/servers/test_server.py --slow 7, stopped when this program ends (its stdin is
// a pipe held here: closing it, or this process dying, stops the server).
class TestServer {
public:
    TestServer() {
        int out[2], in[2];
        if (pipe(out) != 0 || pipe(in) != 0)
            return;
        posix_spawn_file_actions_t actions;
        posix_spawn_file_actions_init(&actions);
        posix_spawn_file_actions_adddup2(&actions, in[0], 0);
        posix_spawn_file_actions_adddup2(&actions, out[1], 1);
        posix_spawn_file_actions_addclose(&actions, in[1]);
        posix_spawn_file_actions_addclose(&actions, out[0]);
        const char *argv[] = {ASYNCBRIDGE_TEST_PYTHON, ASYNCBRIDGE_TEST_SERVER, "--until-stdin-closes",
                              "--slow", "7", nullptr};
        const int rc =
            posix_spawnp(&pid_, argv[0], &actions, nullptr, const_cast<char *const *>(argv), environ);
        posix_spawn_file_actions_destroy(&actions);
        close(in[0]);
        close(out[1]);
        stdin_ = in[1];
        if (rc != 0) {
            std::fprintf(stderr, "cannot start %s %s: %s\n", argv[0], argv[1], std::strerror(rc));
            pid_ = -1;
            close(out[0]);
            return;
        }
        // "port <n>\n", once it accepts connections.
        std::string line;
        char c;
        while (read(out[0], &c, 1) == 1 && c != '\n')
            line += c;
        close(out[0]);
        if (line.rfind("port ", 0) == 0)
            port_ = std::atoi(line.c_str() + 5);
        else
            std::fprintf(stderr, "test server said \"%s\"\n", line.c_str());
    }
    ~TestServer() {
        if (stdin_ >= 0)
            close(stdin_);
        if (pid_ > 0) {
            kill(pid_, SIGTERM);
            waitpid(pid_, nullptr, 0);
        }
    }
    TestServer(const TestServer &) = delete;
    TestServer &operator=(const TestServer &) = delete;
    int port() const { return port_; }
    std::string url(const std::string &path) const { return "http://127.0.0.1:" + std::to_string(port_) + path; }

private:
    pid_t pid_ = -1;
    int stdin_ = -1;
    int port_ = 0;
};

TestServer *server;

// A directory of its own under $TMPDIR (or /tmp), removed with everything in it.
class TempDir {
public:
    TempDir() {
        const char *base = std::getenv("TMPDIR");
        std::string templ = std::string(base && *base ? base : "/tmp") + "/asyncbridge-cpp-XXXXXX";
        std::vector<char> buf(templ.begin(), templ.end());
        buf.push_back('\0');
        if (mkdtemp(buf.data()))
            path_ = buf.data();
    }
    ~TempDir() {
        std::error_code ec;
        if (!path_.empty())
            fs::remove_all(path_, ec);
    }
    TempDir(const TempDir &) = delete;
    TempDir &operator=(const TempDir &) = delete;
    const fs::path &path() const { return path_; }
    std::string file(const std::string &name) const { return (path_ / name).string(); }

private:
    fs::path path_;
};

std::string slurp(const std::string &path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

bool is_stream_pattern(std::string_view body) {
    for (std::size_t i = 0; i < body.size(); ++i)
        if (static_cast<unsigned char>(body[i]) != i % 251)
            return false;
    return true;
}

// ---- HTTP ---------------------------------------------------------------------------

void http_get_gives_a_response_view() {
    CHECK(server->port() > 0);
    Bridge bridge;
    const std::string url = server->url("/stream?size=1000&chunk=100");
    Future<http::Response> f = http::get(bridge, url);
    http::ResponseView r = f.get();
    CHECK_EQ(r.status(), 200);
    CHECK_EQ(r.body().size(), 1000u);
    CHECK(is_stream_pattern(r.body()));
    CHECK(r.header("content-length").has_value());
    CHECK_EQ(*r.header("Content-Length"), std::string_view("1000"));
    CHECK_EQ(*r.header("CONTENT-TYPE"), std::string_view("application/octet-stream"));
    CHECK(!r.header("x-not-there").has_value());
    bool listed = false;
    for (const auto &[name, value] : r.headers())
        listed = listed || (name == "content-length" && value == "1000");
    CHECK(listed);
    CHECK_EQ(r.url(), std::string_view(url));
    CHECK_EQ(f.progress().done, 1000u);
    CHECK_EQ(f.progress().total, 1000u);
}

void http_take_gives_an_owned_response() {
    Bridge bridge;
    http::Response r = http::get(bridge, server->url("/user/12")).take(); // the future is gone
    CHECK_EQ(r.status(), 200);
    CHECK_EQ(r.body(), std::string_view("user-12"));
    http::Response moved = std::move(r);
    CHECK(r.get() == nullptr);
    CHECK_EQ(r.status(), -1); // a moved-from response reads as none
    CHECK(r.body().empty());
    CHECK_EQ(moved.body(), std::string_view("user-12"));
    http::Response other;
    other = std::move(moved);
    CHECK_EQ(other.status(), 200);
}

void http_status_and_fail_on_status() {
    Bridge bridge;
    auto plain = http::get(bridge, server->url("/nope"));
    CHECK_EQ(plain.get().status(), 404); // a response is a response
    auto strict = http::get(bridge, server->url("/nope"), BRIDGE_HTTP_FAIL_ON_STATUS);
    CHECK_THROWS(failed, e, strict.get());
    CHECK_EQ(e->code(), BRIDGE_E_HTTP_STATUS);
    CHECK(e->message().find("404") != std::string::npos);
    auto unavailable = http::get(bridge, server->url("/orders/19"));
    CHECK_EQ(unavailable.get().status(), 503);
}

void http_get_follows_redirects() {
    Bridge bridge;
    auto f = http::get(bridge, server->url("/redirect?to=/user/5"));
    CHECK_EQ(f.get().status(), 200);
    CHECK_EQ(f.get().body(), std::string_view("user-5"));
    CHECK_EQ(f.get().url(), server->url("/user/5"));
}

void http_post_sends_body_and_content_type() {
    Bridge bridge;
    std::string body = "a=1&b=";
    body += std::string(3, '\0');
    body += "end";
    auto f = http::post(bridge, server->url("/echo"), body, "application/x-www-form-urlencoded");
    http::ResponseView r = f.get();
    CHECK_EQ(r.status(), 200);
    CHECK_EQ(r.body(), std::string_view(body));
    CHECK_EQ(*r.header("content-type"), std::string_view("application/x-www-form-urlencoded"));
}

void http_send_with_a_timeout_fails_timed_out() {
    Bridge bridge;
    http::Request req;
    req.url = server->url("/user/7"); // answers after a minute
    req.timeout = 200ms;
    req.headers = {"X-Test: yes"};
    CHECK_THROWS(failed, e, http::send(bridge, req).get());
    CHECK_EQ(e->code(), BRIDGE_E_TIMED_OUT);
    CHECK(e->timed_out());
}

void http_cancel_in_flight() {
    Bridge bridge;
    auto f = http::get(bridge, server->url("/stock/7")); // answers after a minute
    std::this_thread::sleep_for(20ms);
    CHECK(f.cancel());
    CHECK_THROWS(cancelled, c, f.get());
}

void http_download_to_a_file() {
    Bridge bridge;
    TempDir dir;
    http::Request req;
    req.url = server->url("/stream?size=70000");
    req.output_path = dir.file("download.bin");
    auto f = http::send(bridge, req);
    CHECK_EQ(f.get().status(), 200);
    CHECK(f.get().body().empty()); // it went to the file
    const std::string data = slurp(req.output_path);
    CHECK_EQ(data.size(), 70000u);
    CHECK(is_stream_pattern(data));
}

void http_errors() {
    Bridge bridge;
    CHECK_THROWS(error, e, http::get(bridge, "not a url"));
    CHECK_EQ(e->status(), BRIDGE_E_INVALID);
    http::Request bad_method;
    bad_method.url = server->url("/user/1");
    bad_method.method = "NOT A TOKEN";
    CHECK_THROWS(error, e2, http::send(bridge, bad_method));
    CHECK_EQ(e2->status(), BRIDGE_E_INVALID);

    // A port nobody listens on (bound, then closed): connection refused.
    int s = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    CHECK(bind(s, reinterpret_cast<sockaddr *>(&a), sizeof a) == 0);
    CHECK(getsockname(s, reinterpret_cast<sockaddr *>(&a), &len) == 0);
    close(s);
    auto refused = http::get(bridge, "http://127.0.0.1:" + std::to_string(ntohs(a.sin_port)) + "/");
    CHECK_THROWS(failed, e3, refused.get());
    CHECK_EQ(e3->code(), BRIDGE_E_IO);
    CHECK_EQ(e3->os_error(), ECONNREFUSED);
    CHECK_EQ(refused.outcome().os_error(), ECONNREFUSED);

    http::Request limited;
    limited.url = server->url("/stream?size=1000");
    limited.max_body = 100;
    CHECK_THROWS(failed, e5, http::send(bridge, limited).get());
    CHECK_EQ(e5->code(), BRIDGE_E_TOO_LARGE);

    CHECK(bridge.shutdown());
    CHECK_THROWS(error, e4, http::get(bridge, server->url("/user/1")));
    CHECK_EQ(e4->status(), BRIDGE_E_NOT_RUNNING);
}

void http_then_chain() {
    Bridge bridge;
    Queue q;
    auto user = http::get(bridge, server->url("/user/3"));
    auto length = user.then([](Future<http::Response> &r) { return r.get().body().size(); });
    std::string seen;
    user.then(q, [&](Future<http::Response> &r) { seen = std::string(r.get().body()); });
    CHECK_EQ(length.get(), 6u);
    CHECK(check::eventually([&] {
        q.dispatch();
        return !seen.empty();
    }));
    CHECK_EQ(seen, std::string("user-3"));
}

// ---- processes ----------------------------------------------------------------------

void process_exit_code_and_output() {
    Bridge bridge;
    auto f = process::run(bridge, "/bin/sh", {"-c", "echo hi; echo err >&2; exit 3"});
    process::ResultView r = f.get();
    CHECK_EQ(r.exit_code(), 3);
    CHECK_EQ(r.signal(), 0);
    CHECK_EQ(r.out(), std::string_view("hi\n"));
    CHECK_EQ(r.err(), std::string_view("err\n"));
    process::Result owned = f.take();
    CHECK_EQ(owned.exit_code(), 3);
    f.reset();
    CHECK_EQ(owned.out(), std::string_view("hi\n")); // outlives the future
    process::Result moved = std::move(owned);
    CHECK(owned.get() == nullptr);
    CHECK_EQ(owned.exit_code(), -1);
    CHECK_EQ(moved.exit_code(), 3);
}

void process_options() {
    Bridge bridge;
    TempDir dir;
    process::Options o;
    o.program = "/bin/sh";
    o.args = {"-c", "cat; echo \"[$FOO]\"; pwd; echo oops >&2"};
    o.env = std::vector<std::string>{"FOO=bar"};
    o.cwd = dir.path().string();
    o.input = "typed in\n";
    o.merge_stderr = true;
    auto f = process::run(bridge, o);
    const std::string out(f.get().out());
    CHECK_EQ(f.get().exit_code(), 0);
    CHECK_EQ(out, "typed in\n[bar]\n" + fs::canonical(dir.path()).string() + "\noops\n");
    CHECK(f.get().err().empty());
}

void process_killed_by_a_signal() {
    Bridge bridge;
    auto f = process::run(bridge, "/bin/sh", {"-c", "kill -TERM $$"});
    CHECK_EQ(f.get().exit_code(), -1);
    CHECK_EQ(f.get().signal(), SIGTERM);
}

void process_failures() {
    Bridge bridge;
    auto missing = process::run(bridge, "/nonexistent/program");
    CHECK_THROWS(failed, e, missing.get());
    CHECK_EQ(e->code(), BRIDGE_E_IO);
    CHECK_EQ(e->os_error(), ENOENT);

    process::Options slow;
    slow.program = "sleep";
    slow.args = {"30"};
    slow.timeout = 100ms;
    CHECK_THROWS(failed, e2, process::run(bridge, slow).get());
    CHECK(e2->timed_out());

    process::Options chatty;
    chatty.program = "yes";
    chatty.max_output = 1000;
    CHECK_THROWS(failed, e3, process::run(bridge, chatty).get());
    CHECK_EQ(e3->code(), BRIDGE_E_TOO_LARGE);
}

void process_cancel() {
    Bridge bridge;
    auto f = process::run(bridge, "sleep", {"30"});
    std::this_thread::sleep_for(20ms);
    CHECK(f.cancel());
    CHECK_THROWS(cancelled, c, f.get());
}

// ---- files --------------------------------------------------------------------------

void file_write_then_read() {
    Bridge bridge;
    TempDir dir;
    const std::string path = dir.file("a.txt");
    Future<void> w = file::write(bridge, path, "hello");
    w.get();
    CHECK_EQ(slurp(path), std::string("hello"));
    Future<Bytes> r = file::read(bridge, path);
    static_assert(std::is_same_v<decltype(r.get()), std::string_view>);
    CHECK_EQ(r.get(), std::string_view("hello"));
    Bytes b = r.take();
    CHECK_EQ(b.size(), 5u);
    CHECK_EQ(b.str(), std::string("hello"));
    CHECK_EQ(b.view(), std::string_view("hello"));
    CHECK(!b.empty());
    Bytes moved = std::move(b);
    CHECK(b.empty());
    CHECK(b.data() == nullptr);
    CHECK_EQ(moved.str(), std::string("hello"));

    file::write(bridge, path, " world", BRIDGE_FILE_APPEND).get();
    CHECK_EQ(file::read(bridge, path).take().str(), std::string("hello world"));
    file::write(bridge, path, "replaced", BRIDGE_FILE_ATOMIC).get();
    CHECK_EQ(file::read(bridge, path).take().str(), std::string("replaced"));

    // Binary data, NUL bytes included.
    const std::string binary("\0\1\2\0\xff", 5);
    file::write(bridge, path, binary).get();
    CHECK_EQ(file::read(bridge, path).take().str(), binary);
    // An empty file.
    file::write(bridge, path, std::string_view()).get();
    auto empty = file::read(bridge, path);
    CHECK(empty.get().empty());
    CHECK(empty.take().empty());
}

void file_failures() {
    Bridge bridge;
    TempDir dir;
    auto missing = file::read(bridge, dir.file("missing"));
    CHECK_THROWS(failed, e, missing.get());
    CHECK_EQ(e->code(), BRIDGE_E_IO);
    CHECK_EQ(e->os_error(), ENOENT);
    CHECK_EQ(missing.outcome().os_error(), ENOENT);

    auto directory = file::read(bridge, dir.path().string());
    CHECK_THROWS(failed, e2, directory.get());
    CHECK_EQ(e2->os_error(), EISDIR);

    const std::string path = dir.file("big");
    file::write(bridge, path, std::string(100, 'x')).get();
    CHECK_THROWS(failed, e3, file::read(bridge, path, 10).get());
    CHECK_EQ(e3->code(), BRIDGE_E_TOO_LARGE);

    CHECK_THROWS(failed, e4, file::write(bridge, dir.file("no/such/dir/f"), "x").get());
    CHECK_EQ(e4->code(), BRIDGE_E_IO);
    CHECK_EQ(e4->os_error(), ENOENT);

    CHECK_THROWS(error, e5, file::write(bridge, path, "x", BRIDGE_FILE_APPEND | BRIDGE_FILE_ATOMIC));
    CHECK_EQ(e5->status(), BRIDGE_E_INVALID);
    CHECK_EQ(slurp(path), std::string(100, 'x')); // untouched
}

} // namespace

int main() {
    // Started before any thread exists.
    TestServer test_server;
    server = &test_server;
    RUN(http_get_gives_a_response_view);
    RUN(http_take_gives_an_owned_response);
    RUN(http_status_and_fail_on_status);
    RUN(http_get_follows_redirects);
    RUN(http_post_sends_body_and_content_type);
    RUN(http_send_with_a_timeout_fails_timed_out);
    RUN(http_cancel_in_flight);
    RUN(http_download_to_a_file);
    RUN(http_errors);
    RUN(http_then_chain);
    RUN(process_exit_code_and_output);
    RUN(process_options);
    RUN(process_killed_by_a_signal);
    RUN(process_failures);
    RUN(process_cancel);
    RUN(file_write_then_read);
    RUN(file_failures);
    CHECK_EXIT();
}
