//! The kwargs registry: class name -> factory. A file names its classes;
//! loading looks each name up here (never anything else), so a checkpoint
//! rebuilds its objects with no user code and runs none of its own.

use std::collections::{BTreeMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use tch::nn;

use crate::error::{panic_message, Error, Result};

/// A model built by a factory: any tch module, run with a train flag.
pub type BoxedModel = Box<dyn nn::ModuleT>;

/// Builds a model under a var-store path from its constructor kwargs.
pub type ModelFactory = dyn Fn(nn::Path<'_>, &Kwargs<'_>) -> Result<BoxedModel> + Send + Sync;

/// Constructor kwargs as the factory sees them: typed getters that name
/// the kwarg and the class in every error, and a check that every kwarg
/// given was used (PyTorch raises TypeError on an unexpected kwarg).
pub struct Kwargs<'a> {
    class: &'a str,
    map: &'a Map<String, Value>,
    used: Mutex<HashSet<String>>,
    loading: bool,
}

impl<'a> Kwargs<'a> {
    /// Kwargs for building `class`; `loading` says the model is rebuilt
    /// from a file (see [`loading`](Self::loading)).
    pub fn new(class: &'a str, map: &'a Map<String, Value>, loading: bool) -> Self {
        Kwargs {
            class,
            map,
            used: Mutex::new(HashSet::new()),
            loading,
        }
    }

    /// True when the model is being rebuilt from a file: every initial
    /// value will be overwritten by the file's, so a factory may skip a
    /// costly random init (PyTorch's `skip_init`). Random init of a 1 GiB
    /// model costs about ten times the load itself.
    pub fn loading(&self) -> bool {
        self.loading
    }

    pub fn class(&self) -> &str {
        self.class
    }

    /// The raw JSON object.
    pub fn as_map(&self) -> &Map<String, Value> {
        self.map
    }

    pub fn error(&self, reason: impl Into<String>) -> Error {
        Error::InvalidKwargs {
            class: self.class.to_owned(),
            reason: reason.into(),
        }
    }

    fn take(&self, key: &str) -> Option<&'a Value> {
        self.used.lock().expect("kwargs lock").insert(key.to_owned());
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// An integer kwarg that must be present.
    pub fn required_i64(&self, key: &str) -> Result<i64> {
        self.optional_i64_opt(key)?
            .ok_or_else(|| self.error(format!("missing required kwarg {key:?}")))
    }

    /// An integer kwarg with a default.
    pub fn i64_or(&self, key: &str, default: i64) -> Result<i64> {
        Ok(self.optional_i64_opt(key)?.unwrap_or(default))
    }

    fn optional_i64_opt(&self, key: &str) -> Result<Option<i64>> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.error(format!("kwarg {key:?} must be an integer, got {v}"))),
        }
    }

    /// An integer kwarg that must be present and at least `min`.
    pub fn required_i64_at_least(&self, key: &str, min: i64) -> Result<i64> {
        let v = self.required_i64(key)?;
        if v < min {
            return Err(self.error(format!("kwarg {key:?} must be at least {min}, got {v}")));
        }
        Ok(v)
    }

    /// A float kwarg with a default (integers are accepted, as in Python).
    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.take(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.error(format!("kwarg {key:?} must be a number, got {v}"))),
        }
    }

    /// A boolean kwarg with a default.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.take(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.error(format!("kwarg {key:?} must be a boolean, got {v}"))),
        }
    }

    /// Fails on the first kwarg that no getter asked for.
    pub fn finish(&self) -> Result<()> {
        let used = self.used.lock().expect("kwargs lock");
        match self.map.keys().find(|k| !used.contains(*k)) {
            Some(k) => Err(self.error(format!("unexpected kwarg {k:?}"))),
            None => Ok(()),
        }
    }
}

/// Name -> factory for every class a checkpoint may name.
#[derive(Clone)]
pub struct Registry {
    models: BTreeMap<String, Arc<ModelFactory>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("models", &self.models.keys()).finish()
    }
}

impl Registry {
    /// A registry holding the built-in classes.
    pub fn new() -> Self {
        let mut r = Self::empty();
        crate::models::register_builtins(&mut r);
        r
    }

    /// A registry with nothing in it.
    pub fn empty() -> Self {
        Registry {
            models: BTreeMap::new(),
        }
    }

    /// Registers a model factory under `name` (use the Python class's
    /// `module.QualName` so that files from Python resolve to it).
    pub fn register_model<F>(&mut self, name: &str, factory: F) -> Result<()>
    where
        F: Fn(nn::Path<'_>, &Kwargs<'_>) -> Result<BoxedModel> + Send + Sync + 'static,
    {
        if name.is_empty() {
            return Err(Error::InvalidKwargs {
                class: name.into(),
                reason: "a class name cannot be empty".into(),
            });
        }
        if self.models.contains_key(name) {
            return Err(Error::DuplicateName {
                kind: "model",
                name: name.into(),
            });
        }
        self.models.insert(name.to_owned(), Arc::new(factory));
        Ok(())
    }

    /// The registered model names, sorted.
    pub fn model_names(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }

    pub fn has_model(&self, name: &str) -> bool {
        self.models.contains_key(name)
    }

    fn factory(&self, name: &str) -> Result<&Arc<ModelFactory>> {
        self.models.get(name).ok_or_else(|| Error::UnknownName {
            kind: "model",
            name: name.into(),
            known: self.models.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    /// Builds a model (`loading`: see [`Kwargs::loading`]). Unknown
    /// kwargs, a failing factory and a panicking one (tch panics on bad
    /// sizes) all become typed errors.
    pub fn build_model(
        &self,
        name: &str,
        path: nn::Path<'_>,
        kwargs: &Map<String, Value>,
        loading: bool,
    ) -> Result<BoxedModel> {
        let factory = self.factory(name)?;
        let kw = Kwargs::new(name, kwargs, loading);
        let built = catch_unwind(AssertUnwindSafe(|| factory(path, &kw))).map_err(|p| Error::Factory {
            class: name.into(),
            reason: panic_message(&*p),
        })??;
        kw.finish()?;
        Ok(built)
    }
}
