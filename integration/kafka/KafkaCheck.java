// Small Kafka helper for integration/brokers.sh, compiled with javac against the cached Kafka jars
// (kafka-clients is among the broker's runtime dependencies). One JVM does what would otherwise take
// kafka-topics + console producer + console consumer (three JVM starts, plus the heavy kafka-tools deps).
//
//   KafkaCheck roundtrip <bootstrap> <timeout-seconds> [<name>:<partitions> | scram=<user>:<password>]...
//       retries until a throw-away topic can be created, a record produced (acks=all) and read back,
//       then deletes the topic; exit 0 on success, 1 on timeout. Then creates the listed topics like
//       `topic` does, in the same JVM (`brokers.sh up` provisions the sample config's topic this way), and
//       upserts the listed SCRAM-SHA-512 users (the SASL_SSL listener's SCRAM accounts).
//   KafkaCheck tail <bootstrap> <topic> <n>
//       prints the last n records of the topic (over all its partitions, oldest first): partition, offset, key,
//       headers and value, one record a line. Reads without a consumer group; exit 1 when the topic is unknown.
//   KafkaCheck topic <bootstrap> <name> <partitions>
//       creates a topic (replication factor 1; an existing topic with that name is accepted) and waits
//       until every partition has a leader, so a producer can use it at once.
//
// The Rust integration tests create their own topics through rdkafka's admin API; `brokers.sh kafka-topic`
// (this class's `topic` command) is for scripts and manual use.
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.UUID;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.ScramCredentialInfo;
import org.apache.kafka.clients.admin.ScramMechanism;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.admin.UserScramCredentialUpsertion;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.TopicPartitionInfo;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

public final class KafkaCheck {
    public static void main(String[] args) throws Exception {
        if (args.length >= 3 && args[0].equals("roundtrip")) {
            int rc = roundtrip(args[1], Long.parseLong(args[2]));
            for (int i = 3; i < args.length && rc == 0; i++) {
                if (args[i].startsWith("scram=")) {
                    String[] userPassword = args[i].substring(6).split(":", 2);
                    rc = scram(args[1], userPassword[0], userPassword[1]);
                    continue;
                }
                int colon = args[i].lastIndexOf(':');
                if (colon <= 0) {
                    System.err.println("KafkaCheck roundtrip: expected <name>:<partitions>, got " + args[i]);
                    System.exit(2);
                }
                rc = topic(args[1], args[i].substring(0, colon), Integer.parseInt(args[i].substring(colon + 1)));
            }
            System.exit(rc);
        } else if (args.length == 4 && args[0].equals("tail")) {
            System.exit(tail(args[1], args[2], Integer.parseInt(args[3])));
        } else if (args.length == 4 && args[0].equals("topic")) {
            System.exit(topic(args[1], args[2], Integer.parseInt(args[3])));
        }
        System.err.println("usage: KafkaCheck roundtrip <bootstrap> <timeout-s> [<name>:<partitions> | scram=<user>:<password>]... | tail <bootstrap> <topic> <n> | topic <bootstrap> <name> <partitions>");
        System.exit(2);
    }

    private static Properties adminProps(String bootstrap) {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "5000");
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "10000");
        p.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, "500");
        return p;
    }

    private static int topic(String bootstrap, String name, int partitions) throws Exception {
        try (Admin admin = Admin.create(adminProps(bootstrap))) {
            boolean created = true;
            try {
                admin.createTopics(List.of(new NewTopic(name, partitions, (short) 1))).all().get(30, TimeUnit.SECONDS);
            } catch (ExecutionException e) {
                if (!(e.getCause() instanceof TopicExistsException)) throw e;
                created = false;
            }
            int actual = waitForLeaders(admin, name, System.nanoTime() + TimeUnit.SECONDS.toNanos(30));
            if (created) {
                System.out.println("kafka: created topic " + name + " with " + actual + " partition(s)");
            } else if (actual == partitions) {
                System.out.println("kafka: topic " + name + " already exists with " + actual + " partition(s)");
            } else {
                System.out.println("kafka: topic " + name + " already exists with " + actual + " partition(s) (not "
                    + partitions + "; left as it is)");
            }
        }
        return 0;
    }

    private static int tail(String bootstrap, String topic, int n) throws Exception {
        Properties cp = new Properties();
        cp.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        cp.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        try (KafkaConsumer<String, String> consumer =
                 new KafkaConsumer<>(cp, new StringDeserializer(), new StringDeserializer())) {
            List<TopicPartition> parts = new ArrayList<>();
            var infos = consumer.partitionsFor(topic, Duration.ofSeconds(10));
            if (infos == null || infos.isEmpty()) {
                System.err.println("kafka: no topic " + topic);
                return 1;
            }
            for (var info : infos) parts.add(new TopicPartition(topic, info.partition()));
            Map<TopicPartition, Long> ends = consumer.endOffsets(parts, Duration.ofSeconds(10));
            Map<TopicPartition, Long> begins = consumer.beginningOffsets(parts, Duration.ofSeconds(10));
            consumer.assign(parts);
            long wanted = 0;
            for (TopicPartition tp : parts) {
                long from = Math.max(begins.get(tp), ends.get(tp) - n);
                consumer.seek(tp, from);
                wanted += ends.get(tp) - from;
            }
            List<ConsumerRecord<String, String>> got = new ArrayList<>();
            long until = System.nanoTime() + TimeUnit.SECONDS.toNanos(15);
            while (got.size() < wanted && System.nanoTime() < until) {
                for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofMillis(200))) {
                    if (r.offset() < ends.get(new TopicPartition(r.topic(), r.partition()))) got.add(r);
                }
            }
            got.sort(Comparator.comparingLong(ConsumerRecord::timestamp));
            for (ConsumerRecord<String, String> r : got.subList(Math.max(0, got.size() - n), got.size())) {
                StringBuilder h = new StringBuilder();
                for (Header header : r.headers()) {
                    if (h.length() > 0) h.append(", ");
                    h.append(header.key()).append('=').append(new String(header.value(), StandardCharsets.UTF_8));
                }
                System.out.println(r.topic() + "/" + r.partition() + "@" + r.offset() + " key=" + r.key() + " headers={" + h
                    + "} value=" + r.value());
            }
            if (got.isEmpty()) System.out.println("kafka: " + topic + " holds no record");
        }
        return 0;
    }

    // Creates or updates a SCRAM-SHA-512 credential (KRaft keeps it in the cluster metadata).
    private static int scram(String bootstrap, String user, String password) throws Exception {
        try (Admin admin = Admin.create(adminProps(bootstrap))) {
            ScramCredentialInfo info = new ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096);
            admin.alterUserScramCredentials(List.of(new UserScramCredentialUpsertion(user, info, password)))
                .all().get(30, TimeUnit.SECONDS);
            System.out.println("kafka: SCRAM-SHA-512 credential for " + user + " set");
        }
        return 0;
    }

    // Returns the topic's partition count once every partition has a leader.
    private static int waitForLeaders(Admin admin, String name, long deadline) throws Exception {
        while (true) {
            try {
                Map<String, TopicDescription> d = admin.describeTopics(List.of(name)).allTopicNames().get(10, TimeUnit.SECONDS);
                boolean ready = true;
                for (TopicPartitionInfo p : d.get(name).partitions()) {
                    if (p.leader() == null || p.leader().isEmpty()) ready = false;
                }
                if (ready) return d.get(name).partitions().size();
            } catch (ExecutionException e) {
                if (System.nanoTime() > deadline) throw e;
            }
            if (System.nanoTime() > deadline) throw new IllegalStateException("partitions of " + name + " have no leader");
            Thread.sleep(100);
        }
    }

    private static int roundtrip(String bootstrap, long timeoutSeconds) throws Exception {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(timeoutSeconds);
        Exception last = null;
        int attempt = 0;
        while (System.nanoTime() < deadline) {
            attempt++;
            try {
                once(bootstrap, deadline);
                return 0;
            } catch (Exception e) {
                last = e;
                Thread.sleep(500);
            }
        }
        System.err.println("kafka round trip failed after " + attempt + " attempt(s): " + last);
        return 1;
    }

    private static void once(String bootstrap, long deadline) throws Exception {
        String topic = "sluice-healthcheck-" + UUID.randomUUID();
        String value = "ping-" + UUID.randomUUID();
        try (Admin admin = Admin.create(adminProps(bootstrap))) {
            admin.createTopics(List.of(new NewTopic(topic, 1, (short) 1))).all().get(15, TimeUnit.SECONDS);
            try {
                waitForLeaders(admin, topic, Math.min(deadline, System.nanoTime() + TimeUnit.SECONDS.toNanos(15)));

                Properties pp = new Properties();
                pp.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
                pp.put(ProducerConfig.ACKS_CONFIG, "all");
                pp.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, "15000");
                pp.put(ProducerConfig.REQUEST_TIMEOUT_MS_CONFIG, "5000");
                pp.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, "10000");
                pp.put(ProducerConfig.LINGER_MS_CONFIG, "0");
                try (KafkaProducer<String, String> producer =
                         new KafkaProducer<>(pp, new StringSerializer(), new StringSerializer())) {
                    producer.send(new ProducerRecord<>(topic, "k", value)).get(15, TimeUnit.SECONDS);
                }

                Properties cp = new Properties();
                cp.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
                cp.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
                cp.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
                try (KafkaConsumer<String, String> consumer =
                         new KafkaConsumer<>(cp, new StringDeserializer(), new StringDeserializer())) {
                    TopicPartition tp = new TopicPartition(topic, 0);
                    consumer.assign(Collections.singletonList(tp));
                    consumer.seekToBeginning(Collections.singletonList(tp));
                    long until = Math.min(deadline, System.nanoTime() + TimeUnit.SECONDS.toNanos(15));
                    while (System.nanoTime() < until) {
                        for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofMillis(200))) {
                            if (value.equals(r.value())) return;
                        }
                    }
                    throw new IllegalStateException("produced record not consumed back from " + topic);
                }
            } finally {
                try {
                    admin.deleteTopics(List.of(topic)).all().get(10, TimeUnit.SECONDS);
                } catch (Exception ignored) {
                    // best effort
                }
            }
        }
    }
}
