//! nvhook: an OCI runtime hook that gives containers the host's NVIDIA GPUs.
//!
//! Pipeline (one direction): OCI state + bundle config -> [`nvidia::request::Request`] ->
//! [`nvidia::Inventory`] -> [`plan::Plan`] -> [`apply`] inside the container's mount namespace.
//! Other device classes ([`class`]) come from class files and merge their plans into the same
//! plan. Only `apply` (and the `nvhook-sys` crate it calls) has side effects.

#![forbid(unsafe_code)]

pub mod apply;
pub mod bounded;
pub mod capability;
pub mod cdi;
pub mod class;
pub mod cleanup;
pub mod config;
pub mod devnode;
pub mod doctor;
pub mod elf;
pub mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz;
pub mod hook;
pub mod layout;
pub mod ldcache;
pub mod library;
pub mod list;
pub mod logging;
pub mod nvidia;
pub mod plan;
pub mod rootfs;
pub mod state;
pub mod text;
pub mod timing;

pub use error::{Error, Result};
