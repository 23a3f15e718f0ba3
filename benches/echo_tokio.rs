//! The raw-tokio peer of the echo benchmark (scripts/bench-echo): the same TCP echo
//! server as benches/echo_bridge.c, written directly on tokio with no C boundary and
//! no future object of ours. A current-thread runtime like a default bridge's loop,
//! one task per connection, a 64 KiB buffer per connection as tokio's examples do.
//! Listens on 127.0.0.1 (port 0: any), prints the port on its first line and serves
//! until it is killed. A benchmark, not a test.

use std::io::Write;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn main() -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?.port());
        std::io::stdout().flush()?;
        loop {
            let (mut socket, _) = listener.accept().await?;
            socket.set_nodelay(true)?;
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if socket.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    })
}
