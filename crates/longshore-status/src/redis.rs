//! [`RedisStatusStore`]: job statuses in Redis (6.2 or later), on the `redis` crate with a
//! connection manager (reconnects by itself).
//!
//! Keys (`<prefix>` is `longshore:` unless set):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `<prefix>job:<id>` | hash | the status: one field per JSON field, each value JSON text |
//! | `<prefix>events:<id>` | list | the first status as JSON, then each change's JSON patch, oldest first (index = seq − 1); [`events`](StatusStore::events) folds them into statuses |
//! | `<prefix>unique:<key>` | string | the id of the unfinished job holding a unique key |
//! | `<prefix>cancels:<queue>` | set | unfinished jobs of a queue whose cancellation was asked for |
//! | `<prefix>notices` | channel | a line `<id> <seq> <c\|->` for every change, one message per batch |
//! | `<prefix>cancel-notices` | channel | the same lines for cancellation requests (what workers watch) |
//!
//! Every key of a job expires with it (`PEXPIREAT`): Redis removes statuses itself. Changes
//! are applied by one Lua script per batch, which does no JSON work: Rust sends each field's
//! JSON text and each change's patch as text, so no number in a result is rounded and Redis
//! spends a few commands per change. Redis Cluster is not supported (the scripts touch keys
//! they derive).

use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use longshore_core::status::{
    Change, Created, JobStatus, Notice, StatusError, StatusStore, coalesced,
};
use longshore_core::{MessageId, QueueName};
use redis::aio::ConnectionManager;
use redis::{
    AsyncCommands, Client, Cmd, ErrorKind, FromRedisValue, IntoConnectionInfo, Script,
    ServerErrorKind,
};
use serde_json::{Map, Value};

const CREATE: &str = r#"
local p, id, expire_at, key, channel = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local job = p .. 'job:' .. id
if key ~= '' then
  local ukey = p .. 'unique:' .. key
  local holder = redis.call('GET', ukey)
  if holder and holder ~= id then
    local state = redis.call('HGET', p .. 'job:' .. holder, 'state')
    if state == '"queued"' or state == '"running"' or state == '"retrying"' then
      return holder
    end
  end
  redis.call('SET', ukey, id, 'PXAT', expire_at)
end
if redis.call('EXISTS', job) == 1 then
  return ''
end
redis.call('HSET', job, unpack(ARGV, 7, #ARGV))
redis.call('PEXPIREAT', job, expire_at)
local events = p .. 'events:' .. id
redis.call('DEL', events)
redis.call('RPUSH', events, ARGV[6])
redis.call('PEXPIREAT', events, expire_at)
redis.call('PUBLISH', channel, id .. ' 1 -')
return ''
"#;

const APPLY: &str = r#"
local p, channel, cancel_channel = ARGV[1], ARGV[2], ARGV[3]
local lines, cancel_lines = {}, {}
local i = 4
while i <= #ARGV do
  -- expire_at stays text: a Lua number would be formatted again for every command.
  local id, expire_at, patch, fields = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  local first, last = i + 4, i + 3 + 2 * fields
  local job = p .. 'job:' .. id
  -- What the status is before this change; a job without a queue does not exist.
  local was = redis.call('HMGET', job, 'queue', 'state', 'cancel_requested', 'unique_key', 'seq')
  local queue, state, asked, key = was[1], was[2], was[3] == 'true', was[4]
  if queue then
    for f = first, last, 2 do
      local name = ARGV[f]
      if name == 'state' then
        state = ARGV[f + 1]
      elseif name == 'cancel_requested' then
        asked = ARGV[f + 1] == 'true'
      elseif name == 'unique_key' then
        key = ARGV[f + 1]
      end
    end
    -- The events list holds one entry per sequence number: its length is the new one
    -- (and never one the job had: a list lost apart from its hash starts over).
    local events = p .. 'events:' .. id
    local seq = redis.call('RPUSH', events, patch)
    local had = tonumber(was[5])
    if had and seq <= had then
      seq = had + 1
    end
    redis.call('PEXPIREAT', events, expire_at)
    redis.call('HSET', job, 'seq', seq, unpack(ARGV, first, last))
    redis.call('PEXPIREAT', job, expire_at)
    local finished = state == '"succeeded"' or state == '"dead_lettered"' or state == '"cancelled"'
    local cancel = asked and not finished
    if asked then
      local cancels = p .. 'cancels:' .. cjson.decode(queue)
      if cancel then
        redis.call('SADD', cancels, id)
        redis.call('PEXPIREAT', cancels, expire_at, 'NX')
        redis.call('PEXPIREAT', cancels, expire_at, 'GT')
      else
        redis.call('SREM', cancels, id)
      end
    end
    if key and key ~= 'null' then
      local ukey = p .. 'unique:' .. cjson.decode(key)
      if redis.call('GET', ukey) == id then
        if finished then
          redis.call('DEL', ukey)
        else
          redis.call('PEXPIREAT', ukey, expire_at)
        end
      end
    end
    if cancel then
      lines[#lines + 1] = id .. ' ' .. seq .. ' c'
      cancel_lines[#cancel_lines + 1] = lines[#lines]
    else
      lines[#lines + 1] = id .. ' ' .. seq .. ' -'
    end
  end
  i = last + 1
end
if #lines > 0 then
  redis.call('PUBLISH', channel, table.concat(lines, '\n'))
end
if #cancel_lines > 0 then
  redis.call('PUBLISH', cancel_channel, table.concat(cancel_lines, '\n'))
end
return 0
"#;

static CREATE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(CREATE));
static APPLY_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(APPLY));

/// Job statuses in Redis. Cheap to clone.
#[derive(Clone)]
pub struct RedisStatusStore {
    client: Client,
    connection: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for RedisStatusStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStatusStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn store_error(error: redis::RedisError) -> StatusError {
    StatusError::Store(Box::new(error))
}

fn millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

/// A JSON object's text, and where each field's value sits in it: what a script is sent (the
/// whole object, and each field's JSON text) from one buffer, reused from object to object.
#[derive(Default)]
struct ObjectText<'a> {
    text: Vec<u8>,
    fields: Vec<(&'a str, std::ops::Range<usize>)>,
}

impl<'a> ObjectText<'a> {
    fn new(object: &'a Map<String, Value>) -> Self {
        let mut text = Self::default();
        text.fill(object);
        text
    }

    /// Holds `object` instead of what it held.
    fn fill(&mut self, object: &'a Map<String, Value>) {
        let (text, fields) = (&mut self.text, &mut self.fields);
        text.clear();
        fields.clear();
        text.push(b'{');
        for (index, (name, value)) in object.iter().enumerate() {
            if index > 0 {
                text.push(b',');
            }
            serde_json::to_writer(&mut *text, name).expect("a string is written to a Vec");
            text.push(b':');
            let start = text.len();
            serde_json::to_writer(&mut *text, value).expect("a JSON value is written to a Vec");
            fields.push((name.as_str(), start..text.len()));
        }
        text.push(b'}');
    }

    /// The object as JSON text.
    fn text(&self) -> &[u8] {
        &self.text
    }

    /// Each field's name and value as JSON text.
    fn fields(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.fields
            .iter()
            .map(|(name, range)| (*name, &self.text[range.clone()]))
    }
}

/// An `EVALSHA` of `script` without keys, its arguments to follow. Built as one command,
/// its arguments in one buffer (a `ScriptInvocation` allocates each argument apart, which
/// cost more than the rest of a batch's encoding).
fn script_command(script: &Script, arguments: usize, bytes: usize) -> Cmd {
    let mut command = Cmd::with_capacity(arguments + 3, bytes + 64);
    command.arg("EVALSHA").arg(script.get_hash()).arg(0);
    command
}

/// Runs `command` (from [`script_command`]), loading `script` first if the server does not
/// have it (a restarted or flushed Redis).
async fn run_script<T: FromRedisValue>(
    connection: &mut ConnectionManager,
    script: &Script,
    command: &Cmd,
) -> redis::RedisResult<T> {
    match command.query_async(connection).await {
        Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            script.load_async(connection).await?;
            command.query_async(connection).await
        }
        result => result,
    }
}

impl RedisStatusStore {
    /// Connects to `url` (`redis://host:6379/0`), with keys under `longshore:`.
    pub async fn connect(url: &str) -> Result<Self, StatusError> {
        let invalid = |error: redis::RedisError| {
            StatusError::Store(format!("invalid Redis URL for job statuses: {error}").into())
        };
        // Nagle's algorithm would hold a large batch's last segment for the server's
        // delayed ACK (40 ms).
        let info = url.into_connection_info().map_err(invalid)?;
        let tcp = info.tcp_settings().clone().set_nodelay(true);
        let client = Client::open(info.set_tcp_settings(tcp)).map_err(invalid)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_secs(5)))
            .set_response_timeout(Some(std::time::Duration::from_secs(5)));
        let connection = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|error| {
                StatusError::Store(
                    format!("cannot connect to Redis for job statuses: {error}").into(),
                )
            })?;
        Ok(Self {
            client,
            connection,
            prefix: "longshore:".to_owned(),
        })
    }

    /// Puts keys under `prefix` (say `myapp:longshore:`) instead of `longshore:`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    fn channel(&self) -> String {
        format!("{}notices", self.prefix)
    }

    fn cancel_channel(&self) -> String {
        format!("{}cancel-notices", self.prefix)
    }

    /// The notices on `channel`, one per line of each message.
    async fn subscribe(&self, channel: String) -> Result<BoxStream<'static, Notice>, StatusError> {
        let mut pubsub = self.client.get_async_pubsub().await.map_err(store_error)?;
        pubsub.subscribe(channel).await.map_err(store_error)?;
        Ok(pubsub
            .into_on_message()
            .flat_map(|message| {
                let payload: String = message.get_payload().unwrap_or_default();
                let notices: Vec<Notice> = payload.lines().filter_map(parse_notice).collect();
                futures_util::stream::iter(notices)
            })
            .boxed())
    }

    fn job_key(&self, id: &MessageId) -> String {
        format!("{}job:{id}", self.prefix)
    }
}

/// A status from its hash: `{"field": <JSON text>, ...}`.
fn from_hash(hash: Vec<(String, String)>) -> Result<Option<JobStatus>, StatusError> {
    if hash.is_empty() {
        return Ok(None);
    }
    let mut object = Map::new();
    for (name, text) in hash {
        let value =
            serde_json::from_str(&text).map_err(|error| StatusError::Store(Box::new(error)))?;
        object.insert(name, value);
    }
    serde_json::from_value(Value::Object(object))
        .map(Some)
        .map_err(|error| StatusError::Store(Box::new(error)))
}

#[async_trait]
impl StatusStore for RedisStatusStore {
    async fn create(&self, status: &JobStatus) -> Result<Created, StatusError> {
        let Value::Object(object) =
            serde_json::to_value(status).map_err(|error| StatusError::Store(Box::new(error)))?
        else {
            return Err(StatusError::Store("a status is a JSON object".into()));
        };
        let object = ObjectText::new(&object);
        let mut command = script_command(
            &CREATE_SCRIPT,
            6 + 2 * object.fields.len(),
            object.text().len() * 2,
        );
        command
            .arg(&self.prefix)
            .arg(status.id.as_str())
            .arg(millis(status.expires_at))
            .arg(status.unique_key.as_deref().unwrap_or(""))
            .arg(self.channel())
            .arg(object.text());
        for (name, text) in object.fields() {
            command.arg(name).arg(text);
        }
        let holder: String = run_script(&mut self.connection.clone(), &CREATE_SCRIPT, &command)
            .await
            .map_err(store_error)?;
        Ok(if holder.is_empty() {
            Created::New
        } else {
            Created::Existing(MessageId::from(holder))
        })
    }

    async fn remove(&self, id: &MessageId) -> Result<(), StatusError> {
        let mut connection = self.connection.clone();
        let _: () = connection
            .del(&[self.job_key(id), format!("{}events:{id}", self.prefix)])
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn get(&self, id: &MessageId) -> Result<Option<JobStatus>, StatusError> {
        let hash: Vec<(String, String)> = self
            .connection
            .clone()
            .hgetall(self.job_key(id))
            .await
            .map_err(store_error)?;
        from_hash(hash)
    }

    async fn apply(&self, changes: &[Change]) -> Result<(), StatusError> {
        if changes.is_empty() {
            return Ok(());
        }
        let changes = coalesced(changes);
        // About 24 arguments and 600 bytes a change.
        let mut command =
            script_command(&APPLY_SCRIPT, 3 + 24 * changes.len(), 640 * changes.len());
        command
            .arg(&self.prefix)
            .arg(self.channel())
            .arg(self.cancel_channel());
        let mut patch = ObjectText::default();
        for change in changes.iter() {
            patch.fill(&change.patch);
            command
                .arg(change.id.as_str())
                .arg(millis(change.expires_at))
                .arg(patch.text())
                .arg(change.patch.len());
            for (name, text) in patch.fields() {
                command.arg(name).arg(text);
            }
        }
        let _: i64 = run_script(&mut self.connection.clone(), &APPLY_SCRIPT, &command)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn events(&self, id: &MessageId, after: u64) -> Result<Vec<JobStatus>, StatusError> {
        // The first status, then patches: every status is the fold of those before it.
        let texts: Vec<String> = self
            .connection
            .clone()
            .lrange(format!("{}events:{id}", self.prefix), 0, -1)
            .await
            .map_err(store_error)?;
        match fold_events(&texts, after) {
            Ok(events) => Ok(events),
            // A list that does not start with a status lost its head apart from the hash
            // (evicted, say): what is left is the status as it is now.
            Err(error) => {
                tracing::debug!(%id, %error, "a job's events cannot be replayed; sending its status");
                Ok(self
                    .get(id)
                    .await?
                    .filter(|status| status.seq > after)
                    .into_iter()
                    .collect())
            }
        }
    }

    async fn cancel_requested(&self, queue: &QueueName) -> Result<Vec<MessageId>, StatusError> {
        let ids: Vec<String> = self
            .connection
            .clone()
            .smembers(format!("{}cancels:{queue}", self.prefix))
            .await
            .map_err(store_error)?;
        Ok(ids.into_iter().map(MessageId::from).collect())
    }

    async fn notices(&self) -> Result<BoxStream<'static, Notice>, StatusError> {
        self.subscribe(self.channel()).await
    }

    async fn cancel_notices(&self) -> Result<BoxStream<'static, Notice>, StatusError> {
        self.subscribe(self.cancel_channel()).await
    }

    async fn purge_expired(&self) -> Result<u64, StatusError> {
        // Every key expires by itself; a set member of an expired job goes when read.
        Ok(0)
    }
}

/// The statuses after sequence number `after` from a job's events list: its first status
/// (sequence number 1), then one patch per change (the entry at index `i` has sequence
/// number `i + 1`).
fn fold_events(texts: &[String], after: u64) -> Result<Vec<JobStatus>, StatusError> {
    let bad = |error: serde_json::Error| StatusError::Store(Box::new(error));
    let Some((first, patches)) = texts.split_first() else {
        return Ok(Vec::new());
    };
    let mut status: JobStatus = serde_json::from_str(first).map_err(bad)?;
    let mut statuses = Vec::new();
    if after < 1 {
        statuses.push(status.clone());
    }
    for (seq, text) in (2..).zip(patches) {
        let patch: Map<String, Value> = serde_json::from_str(text).map_err(bad)?;
        status = status.merged(&patch, seq).map_err(bad)?;
        if seq > after {
            statuses.push(status.clone());
        }
    }
    Ok(statuses)
}

/// `<id> <seq> <c|->`.
fn parse_notice(payload: &str) -> Option<Notice> {
    let mut parts = payload.rsplitn(3, ' ');
    let flag = parts.next()?;
    let seq = parts.next()?.parse().ok()?;
    let id = parts.next()?;
    Some(Notice {
        id: MessageId::new(id),
        seq,
        cancel_requested: flag == "c",
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use longshore_core::status::patch;
    use longshore_core::{JobName, QueueName};

    use super::*;

    #[test]
    fn events_fold_patches_onto_the_first_status() {
        let first = JobStatus::queued(
            MessageId::new("m1"),
            JobName::new("resize"),
            QueueName::new("images"),
            None,
            None,
            SystemTime::now() + Duration::from_secs(60),
        );
        let texts = vec![
            serde_json::to_string(&first).unwrap(),
            serde_json::to_string(&patch::running(1, "w:1")).unwrap(),
            serde_json::to_string(&patch::succeeded(None)).unwrap(),
        ];
        let all = fold_events(&texts, 0).unwrap();
        let states: Vec<_> = all.iter().map(|s| (s.seq, s.state)).collect();
        assert_eq!(
            states,
            [
                (1, longshore_core::status::JobState::Queued),
                (2, longshore_core::status::JobState::Running),
                (3, longshore_core::status::JobState::Succeeded),
            ]
        );
        assert_eq!(
            all[2].worker.as_deref(),
            Some("w:1"),
            "running's fields stay"
        );
        assert_eq!(fold_events(&texts, 2).unwrap(), all[2..]);
        assert!(fold_events(&texts, 3).unwrap().is_empty());
        assert!(fold_events(&[], 0).unwrap().is_empty());
    }

    #[test]
    fn a_patch_is_written_back_as_the_json_it_was() {
        let patch = patch::retrying(2, "a \"quoted\" error", SystemTime::now());
        let text = ObjectText::new(&patch);
        let back: Map<String, Value> = serde_json::from_slice(text.text()).unwrap();
        assert_eq!(back, patch);
        for (name, value) in text.fields() {
            assert_eq!(serde_json::from_slice::<Value>(value).unwrap(), patch[name]);
        }
        assert_eq!(ObjectText::new(&Map::new()).text(), b"{}");
    }
}
