//! [`ManifestError`]: what is wrong, and where.

use std::{fmt, path::PathBuf};

/// A manifest that cannot be read or translated. Displays as
/// `FILE: KIND NAMESPACE/NAME: FIELD: message`, leaving out the parts that
/// do not apply (a YAML syntax error has `document N` for its object).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    /// The file the object came from.
    pub file: Option<PathBuf>,
    /// `KIND NAMESPACE/NAME`, or `document N` before an object is known.
    pub object: Option<String>,
    /// The field path, e.g. `spec.ports[0].port`.
    pub field: Option<String>,
    pub message: String,
}

impl ManifestError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        ManifestError {
            file: None,
            object: None,
            field: None,
            message: message.into(),
        }
    }

    pub(crate) fn in_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.file = Some(file.into());
        self
    }

    pub(crate) fn object(mut self, object: impl Into<String>) -> Self {
        self.object = Some(object.into());
        self
    }

    pub(crate) fn field(mut self, field: impl Into<String>) -> Self {
        let field = field.into();
        if !field.is_empty() {
            self.field = Some(field);
        }
        self
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if let Some(object) = &self.object {
            write!(f, "{object}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ManifestError {}

/// Where an object was read: its file (none for an object from the API
/// server) and, for errors and warnings, its `KIND NAMESPACE/NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// `None` for an object from the API server (`--kubernetes`).
    pub file: Option<PathBuf>,
    /// 1-based index of the YAML document in the file (0 for the API).
    pub document: usize,
    /// 0-based index in the `items` of a `kind: List` document.
    pub item: Option<usize>,
    /// `KIND NAMESPACE/NAME`, e.g. `Service default/web`.
    pub object: String,
}

impl Source {
    /// An object from the API server, `KIND NAMESPACE/NAME`.
    pub fn api(object: impl Into<String>) -> Self {
        Source {
            file: None,
            document: 0,
            item: None,
            object: object.into(),
        }
    }

    /// Whether the object came from the API server rather than a file.
    pub fn from_api(&self) -> bool {
        self.file.is_none()
    }

    /// An error about `field` of this object.
    pub(crate) fn err(
        &self,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ManifestError {
        let e = ManifestError::new(message)
            .object(&self.object)
            .field(field);
        match &self.file {
            Some(file) => e.in_file(file),
            None => e,
        }
    }

    /// A warning line in the same format as errors.
    pub(crate) fn warn(&self, field: &str, message: impl fmt::Display) -> String {
        self.err(field, message.to_string()).to_string()
    }

    /// The file's path, or `the API server`.
    pub(crate) fn origin(&self) -> String {
        match &self.file {
            Some(file) => file.display().to_string(),
            None => "the API server".to_string(),
        }
    }

    /// `OBJECT (FILE)`, to name a second object in a message (`OBJECT (API)`
    /// for an object from the API server).
    pub(crate) fn named(&self) -> String {
        match &self.file {
            Some(file) => format!("{} ({})", self.object, file.display()),
            None => format!("{} (API)", self.object),
        }
    }
}
