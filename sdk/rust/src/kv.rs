//! Workers KV: a key-value namespace bound in `kv_namespaces`.
//!
//! ```ignore
//! let kv = env.kv("KV")?;
//! kv.put("greeting", "hello").await?;
//! kv.put_with("session", token, KvPutOptions::new().expiration_ttl(3600)).await?;
//! let greeting: Option<String> = kv.get_text("greeting").await?;
//! let page = kv.list(KvListOptions::new().prefix("user:")).await?;
//! ```
//!
//! Keys are 1..=512 bytes (not `.` or `..`), values at most 25 MiB, and
//! metadata (JSON) at most 1024 bytes. Every call counts against the
//! request's subrequest budget.

use crate::Result;
use crate::bindings::isola::worker::kv as wit;
use crate::error::check;

/// A KV namespace; see [`Env::kv`](crate::Env::kv).
#[derive(Debug)]
pub struct Kv {
    namespace: wit::Namespace,
}

impl Kv {
    pub(crate) fn open(binding: &str) -> Result<Self> {
        Ok(Kv {
            namespace: check(wit::Namespace::open(binding))?,
        })
    }

    /// The value and metadata stored under `key`, or `None`.
    pub async fn get_with_metadata(&self, key: &str) -> Result<Option<KvValue>> {
        Ok(check(self.namespace.get(key))?.map(|value| KvValue {
            value: value.data,
            metadata: value.metadata,
        }))
    }

    /// The value stored under `key` as bytes, or `None`.
    pub async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.get_with_metadata(key).await?.map(|v| v.value))
    }

    /// The value stored under `key` as UTF-8 text, or `None`. A value that
    /// is not UTF-8 is an error.
    pub async fn get_text(&self, key: &str) -> Result<Option<String>> {
        self.get_with_metadata(key)
            .await?
            .map(|v| v.text())
            .transpose()
    }

    /// The value stored under `key` parsed as JSON, or `None`. A value that
    /// is not valid JSON for `T` is an error.
    #[cfg(feature = "json")]
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.get_with_metadata(key)
            .await?
            .map(|v| v.json())
            .transpose()
    }

    /// Store `value` under `key`, replacing what was there (and its
    /// metadata and expiration).
    pub async fn put(&self, key: &str, value: impl AsRef<[u8]>) -> Result<()> {
        self.put_with(key, value, KvPutOptions::default()).await
    }

    /// Store `value` under `key` with an expiration and/or metadata.
    pub async fn put_with(
        &self,
        key: &str,
        value: impl AsRef<[u8]>,
        options: KvPutOptions,
    ) -> Result<()> {
        let options = wit::PutOptions {
            expiration_ttl: options.expiration_ttl,
            expiration: options.expiration,
            metadata: options.metadata,
        };
        check(self.namespace.put(key, value.as_ref(), &options))
    }

    /// Store a value serialized as JSON.
    #[cfg(feature = "json")]
    pub async fn put_json<T: serde::Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        options: KvPutOptions,
    ) -> Result<()> {
        self.put_with(key, serde_json::to_vec(value)?, options)
            .await
    }

    /// Remove `key`. Removing a missing key is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        check(self.namespace.delete(key))
    }

    /// One page of keys (not values), in lexicographic order of their
    /// bytes. While [`KvList::list_complete`] is false, pass its `cursor`
    /// to the next call for the next page.
    pub async fn list(&self, options: KvListOptions) -> Result<KvList> {
        let options = wit::ListOptions {
            prefix: options.prefix,
            limit: options.limit,
            cursor: options.cursor,
        };
        let result = check(self.namespace.list(&options))?;
        Ok(KvList {
            keys: result
                .keys
                .into_iter()
                .map(|key| KvKey {
                    name: key.name,
                    expiration: key.expiration,
                    metadata: key.metadata,
                })
                .collect(),
            list_complete: result.list_complete,
            cursor: result.cursor,
        })
    }
}

/// A value read with [`Kv::get_with_metadata`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvValue {
    pub value: Vec<u8>,
    /// The JSON text stored with the value, if any.
    pub metadata: Option<String>,
}

impl KvValue {
    /// The value as UTF-8 text.
    pub fn text(self) -> Result<String> {
        Ok(String::from_utf8(self.value)?)
    }

    /// The value parsed as JSON.
    #[cfg(feature = "json")]
    pub fn json<T: serde::de::DeserializeOwned>(self) -> Result<T> {
        Ok(serde_json::from_slice(&self.value)?)
    }

    /// The metadata parsed as JSON, or `None` when there is none.
    #[cfg(feature = "json")]
    pub fn metadata_json<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>> {
        parse_metadata(self.metadata.as_deref())
    }
}

/// How [`Kv::put_with`] stores a value. Build one with struct syntax or the
/// builder methods: `KvPutOptions::new().expiration_ttl(60)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvPutOptions {
    /// Seconds from now until the key expires (Workers requires at least 60;
    /// Isola accepts any).
    pub expiration_ttl: Option<u64>,
    /// Seconds since the Unix epoch when the key expires.
    pub expiration: Option<u64>,
    /// JSON text stored with the value (at most 1024 bytes); see
    /// [`KvPutOptions::metadata_json`].
    pub metadata: Option<String>,
}

impl KvPutOptions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn expiration_ttl(mut self, seconds: u64) -> Self {
        self.expiration_ttl = Some(seconds);
        self
    }

    pub fn expiration(mut self, unix_seconds: u64) -> Self {
        self.expiration = Some(unix_seconds);
        self
    }

    /// Metadata given as JSON text. The host checks that it is JSON.
    pub fn metadata(mut self, json: impl Into<String>) -> Self {
        self.metadata = Some(json.into());
        self
    }

    /// Metadata serialized from any serializable value.
    #[cfg(feature = "json")]
    pub fn metadata_json<T: serde::Serialize + ?Sized>(mut self, metadata: &T) -> Result<Self> {
        self.metadata = Some(serde_json::to_string(metadata)?);
        Ok(self)
    }
}

/// Which keys [`Kv::list`] returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvListOptions {
    /// Only keys starting with this.
    pub prefix: Option<String>,
    /// At most this many keys (1000, the default, is the maximum).
    pub limit: Option<u32>,
    /// The `cursor` of the previous page.
    pub cursor: Option<String>,
}

impl KvListOptions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }

    pub fn cursor(mut self, cursor: impl Into<String>) -> Self {
        self.cursor = Some(cursor.into());
        self
    }
}

/// One page of [`Kv::list`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvList {
    pub keys: Vec<KvKey>,
    /// False when more keys follow: pass `cursor` to the next `list`.
    pub list_complete: bool,
    pub cursor: Option<String>,
}

/// A key in a [`KvList`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvKey {
    pub name: String,
    /// Seconds since the Unix epoch.
    pub expiration: Option<u64>,
    /// The JSON text stored with the value, if any.
    pub metadata: Option<String>,
}

impl KvKey {
    /// The metadata parsed as JSON, or `None` when there is none.
    #[cfg(feature = "json")]
    pub fn metadata_json<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>> {
        parse_metadata(self.metadata.as_deref())
    }
}

#[cfg(feature = "json")]
fn parse_metadata<T: serde::de::DeserializeOwned>(metadata: Option<&str>) -> Result<Option<T>> {
    metadata
        .map(serde_json::from_str)
        .transpose()
        .map_err(Into::into)
}
