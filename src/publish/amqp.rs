//! AMQP 0-9-1 (RabbitMQ) publishing with lapin: publisher confirms on a pool of channels, `mandatory`
//! returns as failures, and a background task that reconnects with backoff.
//!
//! Why each channel carries one publish at a time: lapin hands a `basic.return` to whichever pending
//! confirm on that channel is acknowledged next, so with several mandatory publishes in flight on one
//! channel a returned message could be reported on (and hidden from) the wrong publish. A publish
//! therefore checks a channel out of the pool, and gives it back only once its confirm has arrived;
//! concurrency comes from the number of channels ([`MAX_CHANNELS`]).
//!
//! Request-reply uses RabbitMQ's direct reply-to: a request is published, with `reply_to = amq.rabbitmq.reply-to`
//! and its `sluice-id` as `correlation_id`, on a channel that consumes `amq.rabbitmq.reply-to` itself (RabbitMQ sends
//! the reply back on that channel), from a second pool of such channels ([`REPLY_CHANNELS`]), one publish at a time
//! as above. Their consumers hand each reply to [`Replies`] by correlation id.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::error::PublishError;
use super::message::{Ack, Destination, Message, Receipt};
use super::outage::Outage;
use super::reply::{Replies, Reply, Waiter};
use crate::backoff::{Attempts, Backoff};

/// Most reply channels per connection (requests of request-reply routes being published at once; many more may be
/// waiting for their replies).
pub const REPLY_CHANNELS: usize = 16;
/// The pseudo-queue of direct reply-to.
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";
/// Channels opened as soon as a connection is up.
const INITIAL_CHANNELS: usize = 4;
/// Most channels per connection, i.e. most publishes in flight at once per broker.
pub const MAX_CHANNELS: usize = 64;
/// First wait before reconnecting; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Longest wait for the TCP + AMQP handshake and the first channels.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the supervisor looks at the connection state besides reacting to events.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// A RabbitMQ publisher shared by every route that publishes to one broker.
///
/// Cloning is cheap. The connection is closed when the last clone is dropped.
#[derive(Clone)]
pub struct AmqpPublisher {
    shared: Arc<Shared>,
    /// Stops the supervisor when the last clone goes away.
    _guard: Arc<DropGuard>,
}

struct Shared {
    /// Broker name from the config, for logs.
    name: String,
    /// Longest wait for a publisher confirm (and for a free channel).
    confirm_timeout: Duration,
    /// The live connection and its channels; `None` while disconnected.
    session: RwLock<Option<Arc<Session>>>,
    /// True while a connection with its channels is established.
    up: AtomicBool,
    /// Wakes the supervisor to check the connection after a publish saw an error.
    check: Notify,
    /// Requests waiting for their replies.
    replies: Arc<Replies>,
    /// Set when the last publisher handle is dropped.
    stopping: AtomicBool,
    stop: Notify,
}

/// One AMQP connection and its pools of confirm-mode channels.
struct Session {
    connection: Connection,
    /// For publishes.
    publishes: Pool,
    /// For requests: each channel also consumes its replies.
    requests: Pool,
}

/// Channels of one kind.
struct Pool {
    /// Channels in confirm mode with no publish outstanding.
    idle: Mutex<Vec<Channel>>,
    /// One permit per channel that may be open: a publish holds one until its confirm arrives.
    permits: Arc<Semaphore>,
    /// Whether its channels consume direct reply-to (the request pool).
    replies: bool,
}

struct DropGuard(Arc<Shared>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.stopping.store(true, Ordering::SeqCst);
        self.0.stop.notify_one();
    }
}

impl AmqpPublisher {
    /// Start the publisher. Connecting happens in a background task that retries with backoff
    /// (100ms doubling to 5s), so this succeeds while RabbitMQ is down; it fails only on an invalid
    /// URL. Must be called within a tokio runtime. An `amqps://` URL verifies RabbitMQ's certificate against the
    /// system's roots and those in `ca_file` (read again at every connection attempt).
    pub async fn connect(
        name: &str,
        url: &str,
        confirm_timeout: Duration,
        ca_file: Option<PathBuf>,
    ) -> Result<Self, PublishError> {
        url.parse::<lapin::uri::AMQPUri>()
            .map_err(|e| PublishError::config(format!("amqp broker {name:?}: invalid url: {e}"), None))?;
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            confirm_timeout,
            session: RwLock::new(None),
            up: AtomicBool::new(false),
            check: Notify::new(),
            replies: Arc::new(Replies::default()),
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
        });
        tokio::spawn(supervise(shared.clone(), url.to_owned(), ca_file));
        Ok(Self { _guard: Arc::new(DropGuard(shared.clone())), shared })
    }

    /// Publish one message; see [`crate::publish::Publisher::publish`].
    ///
    /// `Ack::Confirm`: Ok only after RabbitMQ acked the message and did not return it.
    /// `Ack::None`: Ok once lapin has the message (at-most-once); the confirm is awaited in the
    /// background and a failure is only logged.
    pub async fn publish(&self, msg: Message, ack: Ack) -> Result<Receipt, PublishError> {
        self.send(msg, ack, false).await
    }

    /// Publishes a request (confirmed, `mandatory`) whose reply comes back by direct reply-to, and returns what waits
    /// for the reply. The caller decides how long to wait.
    pub async fn request(&self, msg: Message) -> Result<Waiter, PublishError> {
        let waiter = self.shared.replies.wait(&msg.id);
        self.send(msg, Ack::Confirm, true).await?;
        Ok(waiter)
    }

    /// Consumes `queue` on a channel of its own with `prefetch` unacknowledged messages at most (manual acks), for a
    /// subscription. Fails while disconnected, or when the queue does not exist.
    pub async fn consume(
        &self,
        queue: &str,
        prefetch: u16,
        tag: &str,
    ) -> Result<(Channel, lapin::Consumer), PublishError> {
        let session = self.shared.current().ok_or_else(|| PublishError::unavailable("amqp not connected", None))?;
        let channel = session.connection.create_channel().await.map_err(|e| map_error(e, "open channel"))?;
        channel.basic_qos(prefetch, BasicQosOptions::default()).await.map_err(|e| map_error(e, "basic.qos"))?;
        let consumer = channel
            .basic_consume(
                short(queue, "queue name")?,
                short(tag, "consumer tag")?,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| map_error(e, "basic.consume"))?;
        Ok((channel, consumer))
    }

    /// The messages ready in `queue` (a passive declare on a channel of its own, closed after).
    pub async fn queue_depth(&self, queue: &str) -> Result<u64, PublishError> {
        let session = self.shared.current().ok_or_else(|| PublishError::unavailable("amqp not connected", None))?;
        let channel = session.connection.create_channel().await.map_err(|e| map_error(e, "open channel"))?;
        let options = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let name = short(queue, "queue name")?;
        let declared = channel.queue_declare(name, options, FieldTable::default()).await;
        let _ = channel.close(200, "sluice backlog sample".into()).await;
        Ok(u64::from(declared.map_err(|e| map_error(e, "passive queue.declare"))?.message_count()))
    }

    /// The requests of this broker waiting for replies.
    #[must_use]
    pub fn replies(&self) -> &Arc<Replies> {
        &self.shared.replies
    }

    /// Publishes messages one after the other on one channel, then awaits their confirms: RabbitMQ keeps a
    /// channel's order, so a destination receives them in this order (a spool's replay). Stops at a failure that
    /// leaves the channel unusable.
    pub async fn publish_ordered(&self, msgs: Vec<Message>) -> Vec<Result<Receipt, PublishError>> {
        let (session, permit, channel) = match self.channel(false).await {
            Ok(taken) => taken,
            Err(e) => return vec![Err(e)],
        };
        let mut confirms = Vec::with_capacity(msgs.len());
        for msg in &msgs {
            let sent = match self.prepare(msg, false) {
                Ok((exchange, routing_key, properties)) => {
                    let options = BasicPublishOptions { mandatory: true, immediate: false };
                    channel.basic_publish(exchange, routing_key, options, &msg.body, properties).await.map_err(|e| {
                        self.shared.check.notify_one();
                        map_error(e, "publish")
                    })
                }
                Err(e) => Err(e),
            };
            let failed = sent.is_err();
            confirms.push(sent);
            if failed {
                break;
            }
        }
        let mut results = Vec::with_capacity(confirms.len());
        let mut healthy = true;
        for (sent, msg) in confirms.into_iter().zip(&msgs) {
            let result = match sent {
                Ok(confirm) => {
                    let outcome = tokio::time::timeout(self.shared.confirm_timeout, confirm).await;
                    healthy &= matches!(outcome, Ok(Ok(Confirmation::Ack(_) | Confirmation::Nack(_))));
                    confirmation(&self.shared.name, outcome, &msg.id)
                }
                Err(e) => Err(e),
            };
            let stop = !healthy || result.as_ref().is_err_and(|e| !e.is_unroutable());
            results.push(result);
            if stop {
                break;
            }
        }
        if healthy {
            session.publishes.checkin(channel);
        } else {
            self.shared.check.notify_one();
        }
        drop(permit);
        results
    }

    /// The exchange, routing key and properties of `msg` (with the reply address of a request).
    fn prepare(
        &self,
        msg: &Message,
        request: bool,
    ) -> Result<(ShortString, ShortString, BasicProperties), PublishError> {
        let Destination::Amqp { exchange, routing_key, persistent } = &msg.destination else {
            return Err(PublishError::config(
                format!("amqp broker {:?} got a Kafka destination", self.shared.name),
                None,
            ));
        };
        let exchange = short(exchange, "exchange")?;
        let routing_key = short(routing_key, "routing key")?;
        let mut properties = properties(msg, *persistent);
        if request {
            let id = ShortString::try_new(msg.id.as_str()).map_err(|_| PublishError::rejected("id too long", None))?;
            properties = properties.with_correlation_id(id).with_reply_to(ShortString::from(DIRECT_REPLY_TO));
        }
        Ok((exchange, routing_key, properties))
    }

    /// The live session, a permit of the publish (or request) pool and a channel from it.
    async fn channel(&self, request: bool) -> Result<(Arc<Session>, OwnedSemaphorePermit, Channel), PublishError> {
        let session = self.shared.current().ok_or_else(|| {
            PublishError::unavailable(format!("amqp broker {:?} is not connected", self.shared.name), None)
        })?;
        if session.connection.status().blocked() {
            return Err(PublishError::unavailable("amqp connection blocked by the broker (resource alarm)", None));
        }
        let timeout = self.shared.confirm_timeout;
        let pool = if request { &session.requests } else { &session.publishes };
        let permit = tokio::time::timeout(timeout, pool.permits.clone().acquire_owned())
            .await
            .map_err(|_| PublishError::unavailable("no free amqp channel in time", None))?
            .map_err(|_| PublishError::unavailable("amqp connection is closing", None))?;
        let channel = pool.checkout(&session.connection, &self.shared.replies, timeout).await.inspect_err(|_| {
            self.shared.check.notify_one();
        })?;
        Ok((session, permit, channel))
    }

    async fn send(&self, msg: Message, ack: Ack, request: bool) -> Result<Receipt, PublishError> {
        let (exchange, routing_key, properties) = self.prepare(&msg, request)?;
        let (session, permit, channel) = self.channel(request).await?;
        let timeout = self.shared.confirm_timeout;
        let pool = if request { &session.requests } else { &session.publishes };

        let options = BasicPublishOptions { mandatory: true, immediate: false };
        let confirm = match channel.basic_publish(exchange, routing_key, options, &msg.body, properties).await {
            Ok(confirm) => confirm,
            Err(e) => {
                // The channel (or the connection) is gone; drop the channel, check the connection.
                self.shared.check.notify_one();
                return Err(map_error(e, "publish"));
            }
        };

        match ack {
            Ack::Confirm => {
                let outcome = tokio::time::timeout(timeout, confirm).await;
                self.shared.settle(pool, channel, permit, outcome, &msg.id)
            }
            Ack::None => {
                let shared = self.shared.clone();
                let id = msg.id;
                tokio::spawn(async move {
                    let outcome = tokio::time::timeout(timeout, confirm).await;
                    if let Err(e) = shared.settle(&session.publishes, channel, permit, outcome, &id) {
                        tracing::warn!(broker = %shared.name, sluice_id = %id, error = %e, "unconfirmed amqp publish failed");
                    }
                });
                Ok(Receipt::Unconfirmed)
            }
        }
    }

    /// True while connected, with channels open, and not blocked by a broker resource alarm.
    #[must_use]
    pub fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::SeqCst)
    }

    /// Wait up to `timeout` until no publish is waiting for its confirm.
    pub async fn flush(&self, timeout: Duration) {
        let Some(session) = self.shared.current() else {
            return;
        };
        let (all, requests) = (MAX_CHANNELS as u32, REPLY_CHANNELS as u32);
        let confirmed = async {
            let _ = session.publishes.permits.acquire_many(all).await;
            let _ = session.requests.permits.acquire_many(requests).await;
        };
        if tokio::time::timeout(timeout, confirmed).await.is_err() {
            tracing::warn!(broker = %self.shared.name, "amqp flush incomplete: confirms still pending");
        }
    }

    /// Broker name from the config.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.shared.name
    }
}

impl Shared {
    fn current(&self) -> Option<Arc<Session>> {
        self.session.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_session(&self, session: Option<Arc<Session>>) {
        self.up.store(session.is_some(), Ordering::SeqCst);
        *self.session.write().unwrap_or_else(|e| e.into_inner()) = session;
    }

    /// Turn the confirm into the publish's result. The channel goes back to the pool only when it is
    /// healthy and has nothing outstanding; otherwise it is dropped (closed).
    fn settle(
        &self,
        pool: &Pool,
        channel: Channel,
        permit: OwnedSemaphorePermit,
        outcome: Result<lapin::Result<Confirmation>, tokio::time::error::Elapsed>,
        id: &str,
    ) -> Result<Receipt, PublishError> {
        let reusable = matches!(outcome, Ok(Ok(Confirmation::Ack(_) | Confirmation::Nack(_))));
        match &outcome {
            _ if reusable => pool.checkin(channel),
            Ok(Err(_)) => self.check.notify_one(),
            // The channel still has this confirm outstanding: it is closed, not reused (a request channel's reply
            // consumer would otherwise keep it open).
            Err(_elapsed) => {
                tokio::spawn(async move {
                    let _ = channel.close(200, "sluice: confirm timed out".into()).await;
                });
            }
            Ok(Ok(_)) => {}
        }
        drop(permit);
        confirmation(&self.name, outcome, id)
    }
}

impl Pool {
    fn new(channels: Vec<Channel>, size: usize, replies: bool) -> Pool {
        Pool { idle: Mutex::new(channels), permits: Arc::new(Semaphore::new(size)), replies }
    }

    /// An idle channel, or a new one in confirm mode (consuming direct reply-to into `replies` for requests).
    async fn checkout(
        &self,
        connection: &Connection,
        replies: &Arc<Replies>,
        timeout: Duration,
    ) -> Result<Channel, PublishError> {
        loop {
            let channel = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match channel {
                Some(channel) if channel.status().connected() => return Ok(channel),
                Some(_closed) => continue,
                None => break,
            }
        }
        let open = async {
            let channel = open_channel(connection).await?;
            if self.replies {
                consume_replies(&channel, replies.clone()).await?;
            }
            Ok(channel)
        };
        tokio::time::timeout(timeout, open)
            .await
            .map_err(|_| PublishError::unavailable("opening an amqp channel timed out", None))?
            .map_err(|e| map_error(e, "open channel"))
    }

    fn checkin(&self, channel: Channel) {
        if channel.status().connected() {
            self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(channel);
        }
    }
}

async fn open_channel(connection: &Connection) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(channel)
}

/// Consumes direct reply-to on `channel` (before anything is published there, as RabbitMQ requires) and hands each
/// reply to `replies` by its correlation id, until the channel closes.
async fn consume_replies(channel: &Channel, replies: Arc<Replies>) -> lapin::Result<()> {
    let options = BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() };
    let mut consumer =
        channel.basic_consume(DIRECT_REPLY_TO.into(), ShortString::from(""), options, FieldTable::default()).await?;
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let p = &delivery.properties;
            let headers = header_pairs(p).into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
            let reply = Reply {
                body: Bytes::from(delivery.data),
                content_type: p.content_type().as_ref().map(|c| c.as_str().to_owned()),
                headers,
            };
            replies.deliver(p.correlation_id().as_ref().map(|c| c.as_str()), reply);
        }
    });
    Ok(())
}

/// A message's headers as (name, text) pairs, names as sent; values that are not strings or numbers are left out.
pub fn header_pairs(properties: &BasicProperties) -> Vec<(String, String)> {
    let Some(headers) = properties.headers() else { return Vec::new() };
    headers.inner().iter().filter_map(|(k, v)| Some((k.as_str().to_owned(), header_text(v)?))).collect()
}

/// A header value as text (strings and numbers; other kinds are left out).
fn header_text(v: &AMQPValue) -> Option<String> {
    Some(match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        _ => return None,
    })
}

/// Connect, keep the session installed while the connection lives, reconnect with backoff.
async fn supervise(shared: Arc<Shared>, url: String, ca_file: Option<PathBuf>) {
    // Counts connections, for logs.
    let mut generation = 0u64;
    let mut backoff = Attempts::new(Backoff::new(MIN_BACKOFF, MAX_BACKOFF));
    let outage = Outage::new(&shared.name, "amqp");
    while !shared.stopping.load(Ordering::SeqCst) {
        let attempt = tokio::time::timeout(CONNECT_TIMEOUT, connect(&shared.name, &url, ca_file.as_deref()));
        let result = tokio::select! {
            r = attempt => r,
            () = shared.stop.notified() => break,
        };
        match result {
            Ok(Ok((connection, channels))) => {
                outage.up();
                generation += 1;
                let session = Arc::new(Session {
                    connection,
                    publishes: Pool::new(channels, MAX_CHANNELS, false),
                    requests: Pool::new(Vec::new(), REPLY_CHANNELS, true),
                });
                tracing::info!(broker = %shared.name, generation, "amqp connected");
                shared.set_session(Some(session.clone()));
                let connected_at = tokio::time::Instant::now();
                let stopped = watch(&shared, &session).await;
                shared.set_session(None);
                // Direct reply-to answers on the channel that sent the request: with the connection gone, no
                // waiting request can get its reply any more (each gets a 503 now rather than a 504 later).
                shared.replies.abandon_all();
                session.publishes.permits.close();
                session.requests.permits.close();
                if stopped {
                    let _ = session.connection.close(200, "sluice shutdown".into()).await;
                    return;
                }
                outage.down(&format_args!("connection {generation} lost"));
                // A connection that drops right after it was made keeps backing off (no tight loop).
                if connected_at.elapsed() >= MAX_BACKOFF {
                    backoff.reset();
                }
            }
            Ok(Err(e)) => outage.down(&format_args!("connect failed: {e}")),
            Err(_elapsed) => outage.down(&"connect timed out"),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {}
            () = shared.stop.notified() => break,
        }
    }
}

async fn connect(name: &str, url: &str, ca_file: Option<&Path>) -> lapin::Result<(Connection, Vec<Channel>)> {
    let properties = ConnectionProperties::default().with_connection_name(LongString::from(format!("sluice-{name}")));
    let cert_chain = match ca_file {
        Some(path) => Some(crate::tls::broker_ca(name, path).map_err(std::io::Error::other)?),
        None => None,
    };
    let tls = OwnedTLSConfig { identity: None, cert_chain };
    let connection = Connection::connect_with_config(url, properties, tls, lapin::runtime::default_runtime()?).await?;
    let mut channels = Vec::with_capacity(INITIAL_CHANNELS);
    for _ in 0..INITIAL_CHANNELS {
        channels.push(open_channel(&connection).await?);
    }
    Ok((connection, channels))
}

/// Wait until the connection is lost (false) or the publisher is dropped (true).
async fn watch(shared: &Shared, session: &Session) -> bool {
    let mut events = Box::pin(session.connection.events_listener());
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    loop {
        if shared.stopping.load(Ordering::SeqCst) {
            return true;
        }
        if !session.connection.status().connected() {
            return false;
        }
        tokio::select! {
            event = events.next() => {
                match event {
                    None => return false,
                    Some(lapin::Event::Error(e)) => {
                        tracing::debug!(broker = %shared.name, error = %e, "amqp error event");
                    }
                    Some(lapin::Event::ConnectionBlocked(reason)) => {
                        tracing::warn!(broker = %shared.name, %reason, "amqp connection blocked");
                        shared.up.store(false, Ordering::SeqCst);
                    }
                    Some(lapin::Event::ConnectionUnblocked) => {
                        tracing::info!(broker = %shared.name, "amqp connection unblocked");
                        shared.up.store(true, Ordering::SeqCst);
                    }
                    Some(_) => {}
                }
            }
            _ = tick.tick() => {}
            () = shared.check.notified() => {}
            () = shared.stop.notified() => return true,
        }
    }
}

/// A short string (at most 255 bytes), or a rejection naming what was too long.
fn short(value: &str, what: &str) -> Result<ShortString, PublishError> {
    ShortString::try_new(value).map_err(|_| PublishError::rejected(format!("amqp {what} longer than 255 bytes"), None))
}

/// AMQP properties: `message_id`, `content_type`, `timestamp`, `app_id`, `delivery_mode`, headers.
fn properties(msg: &Message, persistent: bool) -> BasicProperties {
    let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut headers = FieldTable::default();
    for (k, v) in &msg.headers {
        match ShortString::try_new(k.as_ref()) {
            Ok(key) => {
                headers.insert(key, AMQPValue::LongString(LongString::from(v.as_str())));
            }
            Err(_) => tracing::debug!(header = %k, "header name longer than 255 bytes dropped"),
        }
    }
    let mut properties = BasicProperties::default()
        .with_app_id("sluice".into())
        .with_timestamp(timestamp)
        .with_delivery_mode(if persistent { 2 } else { 1 })
        .with_headers(headers);
    // message_id and content_type are short strings; an oversized one stays in the headers only.
    if let Ok(id) = ShortString::try_new(msg.id.as_str()) {
        properties = properties.with_message_id(id);
    }
    if let Some(content_type) = &msg.content_type
        && let Ok(ct) = ShortString::try_new(content_type.as_str())
    {
        properties = properties.with_content_type(ct);
    }
    properties
}

/// What a publisher confirm (or its absence within the confirm timeout) means for the message `id`.
fn confirmation(
    broker: &str,
    outcome: Result<lapin::Result<Confirmation>, tokio::time::error::Elapsed>,
    id: &str,
) -> Result<Receipt, PublishError> {
    match outcome {
        Ok(Ok(Confirmation::Ack(None))) => Ok(Receipt::Amqp),
        Ok(Ok(Confirmation::Ack(Some(returned)))) => {
            let returned_id = returned.delivery.properties.message_id().clone();
            if returned_id.as_ref().is_some_and(|r| r.as_str() != id) {
                tracing::error!(broker, sluice_id = id, returned_id = ?returned_id, "amqp return matched to another message");
            }
            Err(PublishError::unroutable(
                format!("amqp message returned: {} {}", returned.reply_code, returned.reply_text),
                None,
            ))
        }
        Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::nacked("amqp broker nacked the message")),
        Ok(Ok(Confirmation::NotRequested)) => {
            Err(PublishError::unavailable("amqp channel is not in confirm mode", None))
        }
        Ok(Err(e)) => Err(map_error(e, "confirm")),
        Err(_elapsed) => Err(PublishError::unavailable("amqp publisher confirm timed out", None)),
    }
}

/// Map a lapin error. An exchange that does not exist (the broker closes the channel with 404) is
/// unroutable; an oversized frame is rejected; everything else (connection or channel closed, IO
/// error, missed heartbeat) is unavailable and retryable.
fn map_error(e: lapin::Error, during: &str) -> PublishError {
    let reason = format!("amqp {during}: {e}");
    match e.kind() {
        ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => PublishError::unroutable(reason, Some(e.into())),
            AMQPErrorKind::Soft(AMQPSoftError::CONTENTTOOLARGE)
            | AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
            | AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) => PublishError::rejected(reason, Some(e.into())),
            _ => PublishError::unavailable(reason, Some(e.into())),
        },
        ErrorKind::SerialisationError(_) => PublishError::rejected(reason, Some(e.into())),
        _ => PublishError::unavailable(reason, Some(e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn message(headers: Vec<(String, String)>, id: String, content_type: &str) -> Message {
        Message {
            id,
            body: Bytes::from_static(b"x"),
            content_type: Some(content_type.to_owned()),
            headers: headers.into_iter().map(|(k, v)| (k.into(), v)).collect(),
            destination: Destination::Amqp { exchange: "x".into(), routing_key: "k".into(), persistent: true },
        }
    }

    #[test]
    fn properties_carry_id_type_app_mode_and_headers() {
        let msg = message(vec![("sluice-route".into(), "github".into())], "0190-id".into(), "application/json");
        let props = properties(&msg, true);
        assert_eq!(props.message_id().as_ref().unwrap().as_str(), "0190-id");
        assert_eq!(props.app_id().as_ref().unwrap().as_str(), "sluice");
        assert_eq!(*props.delivery_mode(), Some(2));
        assert_eq!(props.content_type().as_ref().unwrap().as_str(), "application/json");
        assert!(props.timestamp().unwrap() > 1_700_000_000);
        let headers = props.headers().as_ref().unwrap().inner();
        assert_eq!(headers.get("sluice-route"), Some(&AMQPValue::LongString("github".into())));
        assert_eq!(*properties(&msg, false).delivery_mode(), Some(1));
    }

    #[test]
    fn oversized_short_strings_do_not_panic() {
        let long = "a".repeat(300);
        let msg = message(vec![(long.clone(), "v".into())], long.clone(), &long);
        let props = properties(&msg, true);
        assert!(props.message_id().is_none());
        assert!(props.content_type().is_none());
        assert!(props.headers().as_ref().unwrap().inner().is_empty());
        let err = short(&long, "routing key").unwrap_err();
        assert!(matches!(err, PublishError::Rejected { .. }), "{err:?}");
    }
}
