//! What a paid request goes through: admission against the signed voucher, the chain's escrow
//! and the user's history ([`admission`]); the user's request and token budgets ([`limits`]);
//! and, once admitted, the job that always ends in a sealed receipt ([`job`]).

pub mod admission;
pub mod job;
pub mod limits;
