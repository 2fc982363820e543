//! The mesh's L7 layer, for Service ports that declare appProtocol `http`:
//! routing by HTTPRoute with weighted splits between Services, per-route
//! timeouts, retries of idempotent requests within a budget, and outlier
//! detection, in an HTTP proxy the node proxy hands captured connections to.
//!
//! - [`catalog`]: the [`L7View`] built from Services, EndpointSlices, routes and
//!   policies.
//! - [`routes`]: the routing table built from HTTPRoutes (plain data).
//! - [`balance`]: weighted backend choice and outlier ejection.
//! - [`budget`]: the retry budget.
//! - [`pool`]: kept-alive backend connections.
//! - [`proxy`]: [`L7Proxy`], the [`Connect`] seam to backends and the
//!   [`L7View`] the caller fills.

pub mod balance;
pub mod budget;
pub mod catalog;
pub mod pool;
pub mod proxy;
pub mod routes;

pub use balance::OutlierConfig;
pub use budget::BudgetConfig;
pub use catalog::l7_view;
pub use proxy::{Connect, Downstream, Endpoint, Frontend, L7Error, L7Proxy, L7View, TcpConnect};
pub use routes::{Routes, ServicePort};
