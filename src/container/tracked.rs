//! Extra state objects tracked by name (FORMAT.md 11.3): tracking them,
//! handing them out as their own types, their entries and tensors in a
//! save, and their restoration in a load (checked for every object before
//! any changes).

use std::collections::BTreeSet;

use super::ModelContainer;
use crate::error::{Error, Result};
use crate::extra_state::{ExtraState, Stateful};
use crate::format::{Checkpoint, ExtraEntry, MemberName, INTERNALS_KEY};
use crate::tch_bridge::read_new;

/// The extra state of a save: the metadata entries, and each entry's
/// tensors under their file names.
pub(super) struct SavedExtra {
    pub(super) entries: Vec<ExtraEntry>,
    pub(super) states: Vec<ExtraState>,
}

/// A file's state for each tracked object, checked: (index into the
/// tracked objects, state).
pub(super) type PreparedExtra = Vec<(usize, ExtraState)>;

fn entry_path(name: &str) -> String {
    format!("{INTERNALS_KEY}.extra.{name}")
}

impl ModelContainer {
    /// Tracks `object` under `name`: every checkpoint this container saves
    /// carries its state as the extra-state entry `name`, and every file it
    /// loads or restores must have that entry, of the object's class, which
    /// is loaded into it. Names are non-empty and unique
    /// ([`Error::DuplicateName`]).
    ///
    /// ```no_run
    /// use pytorch_saver::extra_state::{Counters, Rng};
    /// # let mut container = pytorch_saver::ModelContainer::new();
    /// container.track("rng", Rng::new())?;
    /// container.track("counters", Counters::new().with("step", 0).with("epoch", 0))?;
    /// // in the training loop:
    /// container.tracked_mut::<Counters>("counters")?.increment("step");
    /// # Ok::<(), pytorch_saver::Error>(())
    /// ```
    pub fn track<S: Stateful + 'static>(&mut self, name: &str, object: S) -> Result<()> {
        self.track_boxed(name, Box::new(object))
    }

    /// [`track`](Self::track) for an object already boxed.
    pub fn track_boxed(&mut self, name: &str, object: Box<dyn Stateful>) -> Result<()> {
        if name.is_empty() {
            return Err(Error::Usage(
                "a tracked object needs a non-empty name (its extra-state entry's name)".into(),
            ));
        }
        if self.tracked.iter().any(|(n, _)| n == name) {
            return Err(Error::DuplicateName {
                kind: "tracked object",
                name: name.to_owned(),
            });
        }
        self.tracked.push((name.to_owned(), object));
        Ok(())
    }

    /// Stops tracking `name` and returns its object, if one was tracked.
    pub fn untrack(&mut self, name: &str) -> Option<Box<dyn Stateful>> {
        let at = self.tracked.iter().position(|(n, _)| n == name)?;
        Some(self.tracked.remove(at).1)
    }

    /// The names of the tracked objects, in the order they were tracked.
    pub fn tracked_names(&self) -> Vec<&str> {
        self.tracked.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// The object tracked as `name`, as its own type `T`.
    pub fn tracked<T: Stateful + 'static>(&self, name: &str) -> Result<&T> {
        let object = self.tracked_object(name)?;
        let class = object.class_name().to_owned();
        object
            .as_any()
            .downcast_ref::<T>()
            .ok_or_else(|| wrong_type::<T>(name, &class))
    }

    /// The object tracked as `name`, as its own type `T`, to change it
    /// (a training loop bumping its counters).
    pub fn tracked_mut<T: Stateful + 'static>(&mut self, name: &str) -> Result<&mut T> {
        let object = self.tracked_object_mut(name)?;
        let class = object.class_name().to_owned();
        object
            .as_any_mut()
            .downcast_mut::<T>()
            .ok_or_else(|| wrong_type::<T>(name, &class))
    }

    fn tracked_object(&self, name: &str) -> Result<&dyn Stateful> {
        match self.tracked.iter().find(|(n, _)| n == name) {
            Some((_, object)) => Ok(object.as_ref()),
            None => Err(self.not_tracked(name)),
        }
    }

    fn tracked_object_mut(&mut self, name: &str) -> Result<&mut dyn Stateful> {
        let err = self.not_tracked(name);
        match self.tracked.iter_mut().find(|(n, _)| n == name) {
            Some((_, object)) => Ok(object.as_mut()),
            None => Err(err),
        }
    }

    fn not_tracked(&self, name: &str) -> Error {
        Error::Usage(format!(
            "no object is tracked as {name:?}; tracked: {:?}",
            self.tracked_names()
        ))
    }

    /// The extra state a checkpoint saves: each tracked object's state,
    /// its tensors named `<entry>.<name>`.
    pub(super) fn saved_extra(&self) -> Result<SavedExtra> {
        let mut entries = Vec::with_capacity(self.tracked.len());
        let mut states = Vec::with_capacity(self.tracked.len());
        let mut names = BTreeSet::new();
        for (name, object) in &self.tracked {
            let state = object.state()?.prefixed(name)?;
            if let Some(clash) = state.tensors.keys().find(|t| !names.insert(t.to_string())) {
                return Err(state.invalid(
                    "",
                    format!("its tensor name {clash:?} is also another entry's: rename one of the tracked objects"),
                ));
            }
            entries.push(ExtraEntry {
                name: name.clone(),
                class: object.class_name().to_owned(),
                state: state.value.clone(),
            });
            states.push(state);
        }
        Ok(SavedExtra { entries, states })
    }

    /// The file's state for every tracked object, read and checked, so
    /// that [`commit_extra`](Self::commit_extra) cannot fail: each tracked
    /// name has an entry of the object's class in the file, whose state
    /// the object accepts. Changes nothing.
    pub(super) fn prepare_extra(&self, ckpt: &Checkpoint) -> Result<PreparedExtra> {
        let entries = ckpt.metadata().extra.as_deref().unwrap_or(&[]);
        let mut prepared = Vec::with_capacity(self.tracked.len());
        for (index, (name, object)) in self.tracked.iter().enumerate() {
            let entry = entries.iter().find(|e| &e.name == name).ok_or_else(|| {
                let held: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
                Error::StateMismatch {
                    tensor: entry_path(name),
                    reason: format!(
                        "the container tracks {name:?} but the file has no extra-state entry of that name \
                         (it has {held:?}); untrack it to load this file"
                    ),
                }
            })?;
            if entry.class != object.class_name() {
                return Err(Error::StateMismatch {
                    tensor: entry_path(name),
                    reason: format!(
                        "the file's entry is of class {}, the tracked object of class {}",
                        entry.class,
                        object.class_name()
                    ),
                });
            }
            let mut state = ExtraState::read(name, entry.state.clone(), Default::default());
            for tensor_name in state.tag_names() {
                let tensor = read_new(ckpt, ckpt.tensor(MemberName::Extra, &tensor_name)?)?;
                state.tensors.insert(tensor_name, tensor);
            }
            object.check_state(&state)?;
            prepared.push((index, state));
        }
        Ok(prepared)
    }

    /// Loads prepared state into the tracked objects.
    pub(super) fn commit_extra(&mut self, prepared: PreparedExtra) -> Result<()> {
        for (index, state) in prepared {
            self.tracked[index].1.load_state(&state)?;
        }
        Ok(())
    }
}

fn wrong_type<T>(name: &str, class: &str) -> Error {
    Error::Usage(format!(
        "the object tracked as {name:?} (class {class}) is not a {}",
        std::any::type_name::<T>()
    ))
}
