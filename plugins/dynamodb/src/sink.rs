//! The `dynamodb` sink: one item per record; 25 items per `BatchWriteItem` (unprocessed items
//! sent again with backoff), or one conditional `PutItem` per item. Whatever cannot be
//! written now retries the whole batch, which is idempotent, so the pipeline pushes back.

use std::time::Duration;

use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use aws_sdk_dynamodb::Client;
use chrono::Utc;
use futures_util::{StreamExt, TryStreamExt};
use weir_plugin::serde_json::{self, Value};
use weir_plugin::{BatchRef, Context, PluginError, Rejections, Sink};

use crate::config::{Condition, DynamoDbConfig};
use crate::item::{Item, Mapper};

/// Most items in one `BatchWriteItem` (DynamoDB's limit).
const BATCH_ITEMS: usize = 25;

/// The `dynamodb` sink.
pub struct DynamoDbSink {
    config: DynamoDbConfig,
    mapper: Mapper,
    client: Client,
    ctx: Context,
    /// Where the table is, as health reports name it.
    target: String,
}

/// What a failed request means.
enum Failure {
    /// Throttled: back off and send again.
    Throttled(String),
    /// An item is refused for its own sake (too large, wrong key type).
    Item(String),
    /// The condition did not hold: a stored item wins.
    Condition,
    /// Anything else: the host retries the batch.
    Retry(String),
}

fn classify<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    table: &str,
    e: &aws_sdk_dynamodb::error::SdkError<E, R>,
) -> Failure {
    let message = e.message().unwrap_or("").to_owned();
    match e.code() {
        Some("ProvisionedThroughputExceededException" | "ThrottlingException" | "RequestLimitExceeded") => Failure::Throttled(message),
        Some("ValidationException") => Failure::Item(message),
        Some("ConditionalCheckFailedException") => Failure::Condition,
        Some("ResourceNotFoundException") => {
            Failure::Retry(format!("table {table} does not exist ({message}); create it, and the sink goes on"))
        }
        Some(code) => Failure::Retry(format!("{code}: {message}")),
        None => Failure::Retry(DisplayErrorContext(e).to_string()),
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(50u64.saturating_mul(1 << attempt.min(6)))
}

impl DynamoDbSink {
    fn client(config: &DynamoDbConfig) -> Result<Client, PluginError> {
        let id = config.access_key_id.clone().filter(|v| !v.is_empty()).or_else(|| env("AWS_ACCESS_KEY_ID"));
        let secret = config.secret_access_key.clone().filter(|v| !v.is_empty()).or_else(|| env("AWS_SECRET_ACCESS_KEY"));
        let (Some(id), Some(secret)) = (id, secret) else {
            return Err(PluginError::config(
                "no DynamoDB credentials: set access_key_id and secret_access_key, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
                 (DynamoDB Local accepts any)",
            ));
        };
        let token = config.session_token.clone().filter(|v| !v.is_empty()).or_else(|| env("AWS_SESSION_TOKEN"));
        let region = config
            .region
            .clone()
            .filter(|v| !v.is_empty())
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        let timeout = Duration::from_secs(config.request_timeout_secs.max(1));
        let mut b = aws_sdk_dynamodb::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region))
            .credentials_provider(Credentials::new(id, secret, token, None, "weir"))
            .timeout_config(TimeoutConfig::builder().operation_attempt_timeout(timeout).connect_timeout(timeout).build())
            .retry_config(RetryConfig::standard().with_max_attempts(2));
        if let Some(e) = config.endpoint() {
            b = b.endpoint_url(e.trim_end_matches('/'));
        }
        let _guard = weir_plugin::runtime().enter();
        Ok(Client::from_conf(b.build()))
    }

    /// Writes up to 25 items with `BatchWriteItem`, sending unprocessed ones again; returns
    /// the items refused for their own sake, by position in `items`.
    async fn batch_write(&self, items: Vec<Item>) -> Result<Vec<(usize, String)>, PluginError> {
        let requests: Vec<WriteRequest> = items
            .iter()
            .map(|i| {
                WriteRequest::builder().put_request(PutRequest::builder().set_item(Some(i.clone())).build().expect("item is set")).build()
            })
            .collect();
        let mut pending = requests;
        for attempt in 0..self.config.max_attempts.max(1) {
            let sent = self.client.batch_write_item().request_items(&self.config.table, pending.clone()).send().await;
            match sent {
                Ok(out) => {
                    pending = out.unprocessed_items.and_then(|mut m| m.remove(&self.config.table)).unwrap_or_default();
                    if pending.is_empty() {
                        return Ok(Vec::new());
                    }
                }
                Err(e) => match classify(&self.config.table, &e) {
                    Failure::Throttled(_) => {}
                    // One of the items is refused: find it by writing them one by one.
                    Failure::Item(_) => return self.put_each(items, Condition::None).await,
                    Failure::Condition => return Ok(Vec::new()),
                    Failure::Retry(m) => {
                        return Err(PluginError::retry(format!("cannot write to DynamoDB table {}: {m}", self.config.table)))
                    }
                },
            }
            tokio::time::sleep(backoff(attempt)).await;
        }
        Err(PluginError::retry(format!(
            "{} items are still unprocessed (throttled) after {} attempts; the batch is retried",
            pending.len(),
            self.config.max_attempts
        )))
    }

    /// Writes each item with `PutItem`, under `condition`.
    async fn put_each(&self, items: Vec<Item>, condition: Condition) -> Result<Vec<(usize, String)>, PluginError> {
        let mut refused = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            if let Err(reason) = self.put(item, condition).await? {
                refused.push((i, reason));
            }
        }
        Ok(refused)
    }

    /// One `PutItem`: `Ok(Err(reason))` when the item is refused for its own sake.
    async fn put(&self, item: Item, condition: Condition) -> Result<Result<(), String>, PluginError> {
        let k = &self.config.key[0];
        for attempt in 0..self.config.max_attempts.max(1) {
            let mut req = self.client.put_item().table_name(&self.config.table).set_item(Some(item.clone()));
            match condition {
                Condition::None => {}
                Condition::Absent => req = req.condition_expression("attribute_not_exists(#k)").expression_attribute_names("#k", k),
                Condition::Newer => {
                    let v = self.config.version.as_deref().expect("checked");
                    let ver = item.get(v).cloned().unwrap_or(AttributeValue::Null(true));
                    req = req
                        .condition_expression("attribute_not_exists(#k) OR #v < :v")
                        .expression_attribute_names("#k", k)
                        .expression_attribute_names("#v", v)
                        .expression_attribute_values(":v", ver);
                }
            }
            match req.send().await {
                Ok(_) => return Ok(Ok(())),
                Err(e) => match classify(&self.config.table, &e) {
                    Failure::Condition => {
                        self.ctx.counter_add("dynamodb_conditional_skips", "Items not written because the stored item wins (condition)", 1);
                        return Ok(Ok(()));
                    }
                    Failure::Item(m) => return Ok(Err(format!("DynamoDB refused the item: {m}"))),
                    Failure::Throttled(_) => tokio::time::sleep(backoff(attempt)).await,
                    Failure::Retry(m) => {
                        return Err(PluginError::retry(format!("cannot write to DynamoDB table {}: {m}", self.config.table)))
                    }
                },
            }
        }
        Err(PluginError::retry(format!("throttled after {} attempts; the batch is retried", self.config.max_attempts)))
    }
}

impl Sink for DynamoDbSink {
    type Config = DynamoDbConfig;
    const NAME: &'static str = "dynamodb";
    const DESCRIPTION: &'static str = "Writes records as DynamoDB items (BatchWriteItem or conditional PutItem), with a TTL attribute.";
    const WORKERS: bool = true;

    fn validate(config: &DynamoDbConfig) -> Result<(), PluginError> {
        config.check()
    }

    fn create(config: DynamoDbConfig, ctx: Context) -> Result<Self, PluginError> {
        config.check()?;
        let client = Self::client(&config)?;
        let mapper = Mapper::new(&config);
        let target = format!("{}/{}", config.endpoint().unwrap_or("aws"), config.table);
        // Until the first write says, a look at the table.
        let (probe, table, t, key) = (client.clone(), config.table.clone(), target.clone(), config.key.clone());
        weir_plugin::runtime().spawn(async move {
            match probe.describe_table().table_name(&table).send().await {
                Ok(out) => {
                    // HASH first, then RANGE, as `key` lists them.
                    let mut schema: Vec<(String, bool)> = out
                        .table()
                        .map(|t| t.key_schema().iter().map(|k| (k.attribute_name().to_owned(), k.key_type().as_str() == "RANGE")).collect())
                        .unwrap_or_default();
                    schema.sort_by_key(|(_, range)| *range);
                    let names: Vec<String> = schema.into_iter().map(|(n, _)| n).collect();
                    if !names.is_empty() && names != key {
                        let m = format!("table {table}'s key is {names:?} but the sink's key is {key:?}: every write would be refused; set key: {names:?}");
                        ctx.report_error(&m);
                        ctx.report_health("dynamodb", &t, false, &m);
                    } else {
                        ctx.report_health("dynamodb", &t, true, "");
                    }
                }
                Err(e) => {
                    let why = match classify(&table, &e) {
                        Failure::Retry(m) | Failure::Item(m) | Failure::Throttled(m) => m,
                        Failure::Condition => String::new(),
                    };
                    ctx.report_health("dynamodb", &t, false, &why)
                }
            }
        });
        Ok(DynamoDbSink { config, mapper, client, ctx, target })
    }

    fn write(&mut self, batch: &BatchRef<'_>, rejections: &mut Rejections) -> Result<(), PluginError> {
        let now = Utc::now();
        let mut items = Vec::with_capacity(batch.len());
        for (i, r) in batch.iter().enumerate() {
            let item = serde_json::from_slice::<Value>(r.value)
                .map_err(|e| format!("not valid JSON, so it cannot be an item: {e}"))
                .and_then(|v| self.mapper.item(&v, now));
            match item {
                Ok(item) => items.push((i, item)),
                Err(reason) => rejections.reject(i, &reason),
            }
        }
        let (items, refused) = self.mapper.one_per_key(items);
        for (i, reason) in &refused {
            rejections.reject(*i, reason);
        }
        let this = &*self;
        let refused: Result<Vec<(usize, String)>, PluginError> = weir_plugin::runtime().block_on(async {
            match this.config.condition {
                Condition::None => {
                    futures_util::stream::iter(items.chunks(BATCH_ITEMS).map(|chunk| {
                        let origins: Vec<usize> = chunk.iter().map(|(i, _)| *i).collect();
                        let chunk: Vec<Item> = chunk.iter().map(|(_, item)| item.clone()).collect();
                        async move {
                            let refused = this.batch_write(chunk).await?;
                            Ok::<_, PluginError>(refused.into_iter().map(|(j, r)| (origins[j], r)).collect::<Vec<_>>())
                        }
                    }))
                    .buffer_unordered(this.config.concurrency.get())
                    .try_concat()
                    .await
                }
                condition => {
                    futures_util::stream::iter(items.into_iter().map(|(i, item)| async move {
                        Ok::<_, PluginError>(this.put(item, condition).await?.err().map(|r| (i, r)).into_iter().collect::<Vec<_>>())
                    }))
                    .buffer_unordered(this.config.concurrency.get())
                    .try_concat()
                    .await
                }
            }
        });
        match &refused {
            Ok(_) => self.ctx.report_health("dynamodb", &self.target, true, ""),
            Err(e) => self.ctx.report_health("dynamodb", &self.target, false, &e.to_string()),
        }
        for (i, reason) in refused? {
            rejections.reject(i, &reason);
        }
        Ok(())
    }
}
