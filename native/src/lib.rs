//! Tunseal's native data-path core: one call per TSO frame (cut + seal) and one per GRO run
//! (open + coalesce), behind the small Python face in `py.rs`; and the raw-IP transport's
//! batching (`mmsg.rs`: sendmmsg / recvmmsg, with its own small face). The pure-Python data path
//! (helper/offload.py, helper/datapath.py) is the specification this is tested against.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod coalesce;
pub mod header;
pub mod keys;
pub mod mmsg;
pub mod plain;
pub mod replay;
pub mod rx;
pub mod rxloop;
pub mod single;
pub mod tx;

#[cfg(feature = "python")]
pub(crate) mod py;
