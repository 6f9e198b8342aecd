//! End to end: an `Upgrade` request (WebSocket handshake) passes through, and after `101` bytes flow both ways
//! between a raw TCP client and a raw TCP upstream — also on a kept-alive connection that was parked before.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "connection closed before the end of the head");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// An upstream that answers `200 ok` to plain requests and, to an `Upgrade` request, switches to an echo protocol
/// and echoes every byte; it reports every request head.
async fn echo_upstream() -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (heads, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let heads = heads.clone();
            tokio::spawn(async move {
                loop {
                    let head = read_head(&mut s).await;
                    let upgrade = head.to_ascii_lowercase().contains("upgrade: websocket");
                    heads.send(head).unwrap();
                    if !upgrade {
                        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
                        continue;
                    }
                    s.write_all(
                        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                    )
                    .await
                    .unwrap();
                    let (mut r, mut w) = s.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    return;
                }
            });
        }
    });
    (port, rx)
}

#[tokio::test]
async fn websocket_upgrade_is_spliced_both_ways() {
    let (upstream_port, mut heads) = echo_upstream().await;
    let (config, errors) = sluice::config::from_value(serde_json::json!({
        "upstreams": { "ws": { "endpoints": [format!("http://127.0.0.1:{upstream_port}")] } },
        "routes": [{ "name": "ws", "match": { "path_prefix": "/ws" }, "forward": { "upstream": "ws" } }],
        "telemetry": { "access_log": false },
    }));
    assert!(errors.is_empty(), "{errors:?}");
    assert!(sluice::config::validate(&config).errors.is_empty());
    let main = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = main.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway = tokio::spawn(sluice::run(config, sluice::Listeners { main, admin }, async {
        let _ = stopped.await;
    }));

    let mut client = TcpStream::connect(addr).await.unwrap();
    // A plain request first, then a pause: the idle connection is parked (its HTTP state freed) before the
    // upgrade request comes on it.
    client.write_all(b"GET /ws/plain HTTP/1.1\r\nHost: gw\r\n\r\n").await.unwrap();
    let head = read_head(&mut client).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let mut body = [0u8; 2];
    client.read_exact(&mut body).await.unwrap();
    assert!(heads.recv().await.unwrap().starts_with("GET /ws/plain"));
    tokio::time::sleep(sluice::park::PARK_AFTER * 4).await;
    client
        .write_all(
            b"GET /ws/chat HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_head(&mut client).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    let upstream_head = heads.recv().await.unwrap().to_ascii_lowercase();
    assert!(upstream_head.contains("upgrade: websocket"), "{upstream_head}");
    assert!(upstream_head.contains("connection: upgrade"), "{upstream_head}");
    assert!(upstream_head.contains("sec-websocket-key: dghlihnhbxbszsbub25jzq=="), "{upstream_head}");

    for msg in [&b"hello"[..], b"\x81\x05binary\xff"] {
        client.write_all(msg).await.unwrap();
        let mut echoed = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut echoed)).await.unwrap().unwrap();
        assert_eq!(echoed, msg);
    }
    drop(client);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), gateway).await.unwrap().unwrap().unwrap();
}
