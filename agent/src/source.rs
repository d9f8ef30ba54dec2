//! Git access: the agent reads its cluster's directory at the pinned commit
//! through `ferry_proto::git`, which the coordinator shares to resolve refs.

pub use ferry_proto::git::*;
