//! Per-CPU packet counters, one slot per reason. The agent sums the CPUs when it reports them.

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident = $idx:expr, $label:expr;)*) => {
        /// Why a packet was counted. The discriminant is the index in the STATS per-CPU array.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter {
            $($(#[$doc])* $name = $idx,)*
        }

        impl Counter {
            pub const ALL: &'static [Counter] = &[$(Counter::$name,)*];

            /// The name used in `veg stats` and metrics.
            pub const fn label(self) -> &'static str {
                match self {
                    $(Counter::$name => $label,)*
                }
            }
        }
    };
}

counters! {
    /// A packet from a SNAT source, translated and sent out.
    TranslatedOut = 0, "translated_out";
    /// A reply to a translated flow, translated back and sent to the client.
    TranslatedIn = 1, "translated_in";
    /// A packet from a forward (no-SNAT) source, routed unchanged.
    ForwardedOut = 2, "forwarded_out";
    /// A packet to a forward (no-SNAT) source, routed unchanged.
    ForwardedIn = 3, "forwarded_in";
    /// Left to the kernel: for the instance itself, inside the VPC, or not IPv4.
    PassedToHost = 4, "passed_to_host";
    /// TTL would expire: left to the kernel, which answers with ICMP time exceeded.
    TtlExpired = 5, "ttl_expired";
    /// From a source that matches no policy.
    DropNoPolicy = 6, "dropped_no_policy";
    /// From outside, matching no translation.
    DropUnsolicited = 7, "dropped_unsolicited";
    /// Truncated or malformed headers.
    DropMalformed = 8, "dropped_malformed";
    /// IPv4 fragments (not translated yet: dropped rather than leaked).
    DropFragment = 9, "dropped_fragment";
    /// No free port for a new flow.
    DropPortExhausted = 10, "dropped_port_exhausted";
    /// The route lookup failed or the packet is too big for the route.
    DropNoRoute = 11, "dropped_no_route";
    /// A protocol the gateway does not translate (SNAT sources only).
    DropUnsupported = 12, "dropped_unsupported_protocol";
    /// A new translation was created.
    FlowsCreated = 13, "flows_created";
    /// A pair whose other half had been evicted was made whole again.
    FlowsRepaired = 14, "flows_repaired";
    /// An expired translation was found on lookup and replaced.
    FlowsExpiredOnLookup = 15, "flows_expired_on_lookup";
    /// Port allocation fell back to the exhaustive scan.
    PortScanFallbacks = 16, "port_scan_fallbacks";
}

/// Slots in the STATS array (room to grow without changing the map's size).
pub const STATS_SLOTS: u32 = 32;
