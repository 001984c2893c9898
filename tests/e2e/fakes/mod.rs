//! Fakes of the services stepgate calls, each speaking the real wire format. Every fake serves
//! from its own thread and runtime, so a test that blocks (waiting for a gate process to boot,
//! which may call the fake for its startup check) never starves it.

pub mod apns;
pub mod callback;
pub mod fcm;
pub mod push_keys;
pub mod twilio;
pub mod upstream;

use std::net::{SocketAddr, TcpListener};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

/// An axum router served on 127.0.0.1 and a free port until dropped.
pub struct Server {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(router: axum::Router) -> Self {
        let socket = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        socket.set_nonblocking(true).expect("non-blocking socket");
        let addr = socket.local_addr().expect("local address");
        let (shutdown, stop) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("fake server runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(socket).expect("tokio listener");
                // Not graceful: a fake that was told to stall must not hold the test up.
                tokio::select! {
                    _ = axum::serve(listener, router) => {}
                    _ = stop => {}
                }
            });
        });
        Self {
            addr,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    #[allow(dead_code)]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:port`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
