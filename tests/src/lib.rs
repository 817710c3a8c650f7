//! End-to-end tests across both tiers: real TCP from client namespaces through the XDP load
//! balancers to gateway and backend namespaces. They arrive with the network-namespace
//! harness; the data plane's own packet tests live in `lb-userspace/tests/dataplane`.
