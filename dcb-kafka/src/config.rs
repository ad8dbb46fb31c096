//! Client configuration shared by the translator runner, the publisher and
//! the relay.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;

/// The environment variable [`KafkaConfig::from_env`] reads.
pub const BROKERS_ENV: &str = "KAFKA_BROKERS";

/// Where the brokers are and which librdkafka options to pass through.
///
/// ```
/// use std::time::Duration;
/// use dcb_kafka::KafkaConfig;
/// let config = KafkaConfig::new("127.0.0.1:9092")
///     .option("client.id", "cart")
///     .option("message.timeout.ms", "30000")
///     .connect_timeout(Duration::from_secs(5));
/// assert_eq!(config.brokers(), "127.0.0.1:9092");
/// assert_eq!(config.get("client.id"), Some("cart"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaConfig {
    brokers: String,
    options: BTreeMap<String, String>,
    connect_timeout: Duration,
}

impl KafkaConfig {
    /// A configuration for the comma-separated bootstrap `brokers`
    /// (`host:port,host:port`).
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            options: BTreeMap::new(),
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// A configuration from the `KAFKA_BROKERS` environment variable, if set
    /// and not blank.
    pub fn from_env() -> Option<Self> {
        std::env::var(BROKERS_ENV)
            .ok()
            .filter(|b| !b.trim().is_empty())
            .map(KafkaConfig::new)
    }

    /// Sets a librdkafka option (see librdkafka's `CONFIGURATION.md`); it is
    /// passed through unchanged and overrides the defaults this crate sets
    /// (except the ones a component needs for its guarantees, which each
    /// component documents).
    pub fn option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.insert(key.into(), value.into());
        self
    }

    /// How long start-up waits for the brokers to answer before failing with
    /// [`KafkaError::BrokerUnreachable`](crate::KafkaError::BrokerUnreachable)
    /// (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The bootstrap brokers.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// A passed-through option, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.options.get(key).map(String::as_str)
    }

    /// Every passed-through option.
    pub fn options(&self) -> impl Iterator<Item = (&str, &str)> {
        self.options.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The start-up timeout.
    pub fn startup_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// An rdkafka configuration: `defaults` first, then the brokers and the
    /// passed-through options, then `forced` (settings a component's
    /// guarantees depend on).
    pub(crate) fn client_config(
        &self,
        defaults: &[(&str, &str)],
        forced: &[(&str, &str)],
    ) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (k, v) in defaults {
            config.set(*k, *v);
        }
        config.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.options {
            config.set(k, v);
        }
        for (k, v) in forced {
            config.set(*k, *v);
        }
        config
    }
}
