// TLS and SASL settings travel through -X to both clients untouched. The mock broker speaks
// neither, so this checks what can be checked here: the live librdkafka handles carry the values
// (read back from the instances, not from our maps), and a bad value stops start-up naming it.
#include <gtest/gtest.h>
#include <librdkafka/rdkafka.h>

#include "dedup/errors.hpp"
#include "dedup/kafka/consumer.hpp"
#include "dedup/kafka/producer.hpp"
#include "support/kafka_test_util.hpp"

namespace dedup {
namespace {

using test::live_setting;

const kafka::KafkaSettings kSaslSsl = {
    {"security.protocol", "SASL_SSL"},
    {"sasl.mechanism", "SCRAM-SHA-512"},
    {"sasl.username", "dedup"},
    {"sasl.password", "not-a-real-secret"},
    {"ssl.ca.location", "/etc/ssl/certs/ca-certificates.crt"},
    {"ssl.endpoint.identification.algorithm", "https"},
};

TEST(KafkaSecurity, SaslSslSettingsReachTheProducerAndTheConsumer) {
  test::RecordingObserver observer;
  kafka::Producer producer({.brokers = "127.0.0.1:1", .settings = kSaslSsl}, observer);
  kafka::Consumer consumer({.brokers = "127.0.0.1:1",
                            .group = test::unique_name("security"),
                            .topics = {"commands"},
                            .settings = kSaslSsl},
                           observer);
  for (rd_kafka_t* handle : {producer.handle(), consumer.handle()}) {
    EXPECT_EQ(live_setting(handle, "security.protocol"), "sasl_ssl");
    EXPECT_EQ(live_setting(handle, "sasl.mechanisms"), "SCRAM-SHA-512");
    EXPECT_EQ(live_setting(handle, "sasl.username"), "dedup");
    EXPECT_EQ(live_setting(handle, "ssl.ca.location"), "/etc/ssl/certs/ca-certificates.crt");
    EXPECT_EQ(live_setting(handle, "ssl.endpoint.identification.algorithm"), "https");
  }
}

TEST(KafkaSecurity, ABadSecuritySettingStopsStartUpNamingIt) {
  test::RecordingObserver observer;
  auto settings = kSaslSsl;
  settings["sasl.mechanism"] = "NOT-A-MECHANISM";
  try {
    kafka::Producer producer({.brokers = "127.0.0.1:1", .settings = settings}, observer);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(e.field().find("-X"), std::string::npos) << e.field();
  }
  settings = kSaslSsl;
  settings["ssl.ca.location"] = "/nonexistent/ca.pem";
  EXPECT_THROW(kafka::Producer({.brokers = "127.0.0.1:1", .settings = settings}, observer), ConfigError);
}

TEST(KafkaSecurity, SecretsComeFromTheEnvironmentNotTheArguments) {
  const char* environment[] = {"PATH=/usr/bin",
                               "DEDUP_KAFKA_SASL_PASSWORD=s3cr=t",
                               "DEDUP_KAFKA_SSL_KEY_PASSWORD=k",
                               "DEDUP_KAFKA_=ignored",
                               "DEDUP_DB=not-kafka",
                               nullptr};
  const auto settings = kafka::settings_from_environment(environment);
  EXPECT_EQ(settings, (kafka::KafkaSettings{{"sasl.password", "s3cr=t"}, {"ssl.key.password", "k"}}));
  // And they reach the client like any -X setting.
  auto all = kSaslSsl;
  all.erase("sasl.password");
  all.merge(kafka::KafkaSettings(settings));
  test::RecordingObserver observer;
  kafka::Producer producer({.brokers = "127.0.0.1:1", .settings = all}, observer);
  EXPECT_EQ(live_setting(producer.handle(), "sasl.password"), "s3cr=t");
}

}  // namespace
}  // namespace dedup
