//! A minimal Pingora reverse proxy for bench/run.sh: one listener, one upstream (plain HTTP/1.1 with
//! keep-alive: Pingora pools upstream connections by default), one worker thread, no TLS, no access log.
//! The listener also accepts HTTP/2 without TLS (h2c, prior knowledge), detected from the connection preface.
//!
//!     pingora-bench LISTEN_ADDR UPSTREAM_ADDR      e.g. pingora-bench 127.0.0.1:28040 127.0.0.1:28000

use async_trait::async_trait;
use pingora_core::apps::HttpServerOptions;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::Result;
use pingora_proxy::{ProxyHttp, Session};

struct Proxy {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = ();
    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        // tls = false, no SNI: plain HTTP/1.1 to the upstream, connections reused from Pingora's pool.
        Ok(Box::new(HttpPeer::new(self.upstream.as_str(), false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: {} LISTEN_ADDR UPSTREAM_ADDR", args[0]);
        std::process::exit(2);
    }
    let conf = ServerConf {
        threads: 1,                         // one worker thread for the proxy service
        work_stealing: false,
        upstream_keepalive_pool_size: 128,  // idle upstream connections kept for reuse
        pid_file: String::new(),            // only used when daemonized; not here
        grace_period_seconds: Some(0),      // SIGTERM: stop at once (a benchmark, not a deployment)
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora_proxy::http_proxy_service(
        &server.configuration,
        Proxy { upstream: args[2].clone() },
    );
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    proxy.app_logic_mut().expect("proxy app").server_options = Some(options);
    proxy.add_tcp(&args[1]);
    server.add_service(proxy);
    server.run_forever();
}
