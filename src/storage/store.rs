//! Building a store client from a URL and the environment, with the
//! crate's bounded retries and timeouts.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::multipart::MultipartStore;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ClientConfigKey, ObjectStore, RetryConfig};

use crate::format::FormatError;

/// The bounds on every request to an object store, so that a dead
/// endpoint or a wrong bucket fails in seconds, never in minutes.
pub mod limits {
    use std::time::Duration;

    /// Establishing a connection.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// One whole request, a 16 MiB part included.
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
    /// Retries of a request that failed for a transient reason (a refused
    /// or reset connection, a 5xx, a throttle); never of a 4xx.
    pub const MAX_RETRIES: usize = 3;
    /// No retry starts later than this after the first attempt.
    pub const RETRY_TIMEOUT: Duration = Duration::from_secs(30);
}

/// Which client holds the store: S3's own type for the presigned
/// create-only completion (src/storage/upload.rs), any other store through
/// the trait.
#[derive(Clone)]
pub(crate) enum Backend {
    S3(Arc<AmazonS3>),
    Other {
        store: Arc<dyn ObjectStore>,
        multipart: Arc<dyn MultipartStore>,
    },
}

impl Backend {
    fn other<S: ObjectStore + MultipartStore>(store: S) -> Backend {
        let store = Arc::new(store);
        Backend::Other {
            store: store.clone(),
            multipart: store,
        }
    }

    pub(crate) fn store(&self) -> &dyn ObjectStore {
        match self {
            Backend::S3(s) => s.as_ref(),
            Backend::Other { store, .. } => store.as_ref(),
        }
    }

    pub(crate) fn multipart(&self) -> Arc<dyn MultipartStore> {
        match self {
            Backend::S3(s) => s.clone(),
            Backend::Other { multipart, .. } => multipart.clone(),
        }
    }
}

/// An object (or a prefix, for a directory of checkpoints) in a store.
#[derive(Clone)]
pub struct Remote {
    /// `scheme://bucket`, without a trailing slash.
    root: String,
    key: ObjectPath,
    pub(crate) backend: Backend,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Remote").field(&self.url()).finish()
    }
}

fn retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: limits::MAX_RETRIES,
        retry_timeout: limits::RETRY_TIMEOUT,
    }
}

fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

impl Remote {
    /// `text` is an `s3://`, `s3a://`, `gs://`, `az://` or `abfs://` URL.
    pub(crate) fn parse(text: &str) -> Result<Remote, FormatError> {
        let bad = |reason: &str| FormatError::storage("cannot open", text, reason);
        let url = url::Url::parse(text).map_err(|e| bad(&e.to_string()))?;
        let bucket = url
            .host_str()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| bad("the URL names no bucket"))?;
        let scheme = url.scheme().to_ascii_lowercase();
        let key = url.path().trim_matches('/');
        let key = ObjectPath::from_url_path(key).map_err(|e| bad(&e.to_string()))?;
        let root = format!("{scheme}://{bucket}");
        let connect = seconds(limits::CONNECT_TIMEOUT);
        let timeout = seconds(limits::REQUEST_TIMEOUT);
        let built = match scheme.as_str() {
            "s3" | "s3a" => AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout), &connect)
                .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), &timeout)
                .with_retry(retry())
                .build()
                .map(|s| Backend::S3(Arc::new(s))),
            "gs" => GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket)
                .with_config(GoogleConfigKey::Client(ClientConfigKey::ConnectTimeout), &connect)
                .with_config(GoogleConfigKey::Client(ClientConfigKey::Timeout), &timeout)
                .with_retry(retry())
                .build()
                .map(Backend::other),
            _ => MicrosoftAzureBuilder::from_env()
                .with_container_name(bucket)
                .with_config(AzureConfigKey::Client(ClientConfigKey::ConnectTimeout), &connect)
                .with_config(AzureConfigKey::Client(ClientConfigKey::Timeout), &timeout)
                .with_retry(retry())
                .build()
                .map(Backend::other),
        };
        let backend = built.map_err(|e| bad(&crate::storage::object::reason(&e)))?;
        Ok(Remote { root, key, backend })
    }

    /// The URL, as `scheme://bucket/key` (no trailing slash).
    pub fn url(&self) -> String {
        if self.key.as_ref().is_empty() {
            self.root.clone()
        } else {
            format!("{}/{}", self.root, self.key)
        }
    }

    pub(crate) fn key(&self) -> &ObjectPath {
        &self.key
    }

    /// The object `name` under this prefix.
    pub fn join(&self, name: &str) -> Remote {
        Remote {
            root: self.root.clone(),
            key: self.key.clone().join(name),
            backend: self.backend.clone(),
        }
    }

    /// The last segment of the key (the file name), if any.
    pub fn file_name(&self) -> Option<String> {
        self.key.filename().map(str::to_owned)
    }

    /// A location in `store` (any object store), for tests of the
    /// stores no server runs for here.
    #[cfg(test)]
    pub(crate) fn in_store<S: ObjectStore + MultipartStore>(store: S, root: &str, key: &str) -> Remote {
        Remote {
            root: root.to_owned(),
            key: ObjectPath::from(key),
            backend: Backend::other(store),
        }
    }
}
