# Sourced by the scripts that run the examples outside cargo (scripts/check-valgrind,
# scripts/check-tsan, scripts/test-packaging): a local server for the examples that
# talk HTTP (c_examples/http_get.c, c_examples/thread_pool_server.c).
#
#   start_test_server DIR [ARGS...]   starts tests/servers/test_server.py ARGS on
#                                     127.0.0.1 and sets TEST_SERVER_URL to
#                                     http://127.0.0.1:PORT; DIR holds its port file.
#   stop_test_server                  stops it.
#
# The server reads its stdin from a pipe this shell holds open and stops when that
# pipe closes: when the script ends, however it ends, no server is left behind.

start_test_server() {
    local dir=$1 here port="" i
    shift
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    rm -f "$dir/test_server.port"
    exec {TEST_SERVER_FD}> >(exec python3 "$here/test_server.py" --until-stdin-closes "$@" \
        >"$dir/test_server.port")
    TEST_SERVER_PID=$!
    for ((i = 0; i < 300; i++)); do
        port=$(sed -n 's/^port //p' "$dir/test_server.port" 2>/dev/null)
        [[ -n $port ]] && break
        sleep 0.1
    done
    [[ -n $port ]] || { echo "tests/servers/test_server.py did not start" >&2; return 1; }
    TEST_SERVER_URL=http://127.0.0.1:$port
}

stop_test_server() {
    [[ -n ${TEST_SERVER_FD:-} ]] && exec {TEST_SERVER_FD}>&-
    [[ -n ${TEST_SERVER_PID:-} ]] && kill "$TEST_SERVER_PID" 2>/dev/null
    TEST_SERVER_FD="" TEST_SERVER_PID=""
    return 0
}
