// Small RabbitMQ helper for integration/brokers.sh (`brokers.sh sample`), compiled with javac against the RabbitMQ
// Java client that integration/kafka/amqp-pom.xml fetches (it lives next to KafkaCheck.java, its Kafka twin).
//
//   AmqpSetup <amqp-url> <timeout-seconds> <queue> <exchange> <binding-key> [<queue> <exchange> <binding-key>]...
//       declares each queue durable (not exclusive, not auto-delete, no arguments) and binds it to the exchange,
//       which must exist (e.g. amq.topic). queue.declare and queue.bind are idempotent in AMQP 0-9-1, so running it
//       again changes nothing; a queue that exists with other properties (say, not durable) is reported and left
//       alone (exit 1). Retries the connection until the timeout; exit 0 on success.
//   AmqpSetup get <amqp-url> <queue> <n>
//       takes up to n messages off the queue (basic.get, acknowledged) and prints each on a line: routing key,
//       message id, content type, headers and body.
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

import com.rabbitmq.client.AMQP;
import com.rabbitmq.client.AuthenticationFailureException;
import com.rabbitmq.client.Channel;
import com.rabbitmq.client.Connection;
import com.rabbitmq.client.ConnectionFactory;
import com.rabbitmq.client.GetResponse;
import com.rabbitmq.client.ShutdownSignalException;

public final class AmqpSetup {
    public static void main(String[] args) throws Exception {
        if (args.length == 4 && args[0].equals("get")) {
            System.exit(get(args[1], args[2], Integer.parseInt(args[3])));
        }
        if (args.length < 5 || (args.length - 2) % 3 != 0) {
            System.err.println("usage: AmqpSetup <amqp-url> <timeout-s> <queue> <exchange> <binding-key> [...]");
            System.exit(2);
        }
        ConnectionFactory f = new ConnectionFactory();
        f.setUri(args[0]);
        f.setConnectionTimeout(5000);
        f.setHandshakeTimeout(5000);
        f.setAutomaticRecoveryEnabled(false);
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(Long.parseLong(args[1]));
        Connection c;
        try {
            c = connect(f, deadline);
        } catch (Exception e) {
            System.err.println("amqp: cannot connect to " + f.getHost() + ":" + f.getPort() + " vhost " + f.getVirtualHost()
                + " as " + f.getUsername() + ": " + reason(e));
            System.exit(1);
            return;
        }
        int rc = 0;
        try (Connection conn = c) {
            for (int i = 2; i < args.length; i += 3) {
                rc |= queue(conn, args[i], args[i + 1], args[i + 2]);
            }
        }
        System.exit(rc);
    }

    private static int get(String url, String queue, int n) throws Exception {
        ConnectionFactory f = new ConnectionFactory();
        f.setUri(url);
        f.setAutomaticRecoveryEnabled(false);
        try (Connection conn = f.newConnection("sluice-brokers-sh-get"); Channel ch = conn.createChannel()) {
            int taken = 0;
            for (; taken < n; taken++) {
                GetResponse r = ch.basicGet(queue, true);
                if (r == null) break;
                AMQP.BasicProperties p = r.getProps();
                System.out.println("routing_key=" + r.getEnvelope().getRoutingKey() + " message_id=" + p.getMessageId()
                    + " content_type=" + p.getContentType() + " headers=" + p.getHeaders() + " body="
                    + new String(r.getBody(), StandardCharsets.UTF_8));
            }
            if (taken == 0) System.out.println("amqp: queue " + queue + " is empty");
        }
        return 0;
    }

    private static Connection connect(ConnectionFactory f, long deadline) throws Exception {
        while (true) {
            try {
                return f.newConnection("sluice-brokers-sh");
            } catch (AuthenticationFailureException e) {
                throw e; // wrong credentials do not get better by waiting
            } catch (Exception e) {
                if (System.nanoTime() > deadline) throw e;
                Thread.sleep(250);
            }
        }
    }

    private static int queue(Connection conn, String queue, String exchange, String key) throws Exception {
        // A failed passive declare closes its channel (404), so each probe gets a channel of its own.
        boolean existed = exists(conn, queue, false);
        if (!exists(conn, exchange, true)) {
            System.err.println("amqp: exchange " + exchange + " does not exist; queue " + queue + " not bound");
            return 1;
        }
        try (Channel ch = conn.createChannel()) {
            AMQP.Queue.DeclareOk ok = ch.queueDeclare(queue, true, false, false, null);
            ch.queueBind(queue, exchange, key);
            System.out.println("amqp: " + (existed ? "queue " + queue + " already exists" : "created durable queue " + queue)
                + " (" + ok.getMessageCount() + " message(s)), bound to exchange " + exchange + " with key " + key);
            return 0;
        } catch (Exception e) {
            String why = reason(e);
            System.err.println("amqp: cannot declare durable queue " + queue + " / bind it to " + exchange + " (" + why
                + "); delete it (brokers.sh rabbitmqctl delete_queue " + queue + ") and run brokers.sh sample again");
            return 1;
        }
    }

    private static boolean exists(Connection conn, String name, boolean exchange) throws Exception {
        Channel ch = conn.createChannel();
        try {
            if (exchange) ch.exchangeDeclarePassive(name); else ch.queueDeclarePassive(name);
            ch.close();
            return true;
        } catch (Exception e) {
            if (reason(e).contains("NOT_FOUND")) return false; // the server closed the channel
            throw e;
        }
    }

    private static String reason(Throwable e) {
        List<String> seen = new ArrayList<>();
        for (Throwable t = e; t != null; t = t.getCause()) {
            if (t instanceof ShutdownSignalException s && s.getReason() instanceof AMQP.Channel.Close c) {
                return c.getReplyText();
            }
            seen.add(String.valueOf(t.getMessage()));
        }
        return String.join(": ", seen);
    }
}
