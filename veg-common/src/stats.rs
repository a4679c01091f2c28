//! Packet counters, one named slot per reason: the STATS map holds one `Counters` per CPU, which the programs add
//! to and the agent sums. Named fields, so that `bpftool map dump` shows each counter by name.

macro_rules! counters {
    ($($name:ident = $idx:expr, $field:ident, $meaning:expr;)*) => {
        /// Why a packet was counted. The discriminant is the counter's slot in `Counters`.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter {
            $(#[doc = $meaning] $name = $idx,)*
        }

        impl Counter {
            pub const ALL: &'static [Counter] = &[$(Counter::$name,)*];

            /// The name used in `veg stats` and metrics, and the field's in the STATS map.
            pub const fn label(self) -> &'static str {
                match self {
                    $(Counter::$name => stringify!($field),)*
                }
            }

            /// One line that says what the counter counts, for `veg stats` and metric help texts.
            pub const fn meaning(self) -> &'static str {
                match self {
                    $(Counter::$name => $meaning,)*
                }
            }
        }

        /// The STATS map's value, one per CPU: every counter by name, in slot order, and room to grow.
        #[repr(C)]
        #[derive(Clone, Copy, Debug)]
        pub struct Counters {
            $(#[doc = $meaning] pub $field: u64,)*
            /// Slots for counters yet to come: adding one keeps the map's size.
            pub spare: [u64; STATS_SLOTS as usize - Counter::ALL.len()],
        }

        impl Counters {
            pub fn get(&self, counter: Counter) -> u64 {
                match counter {
                    $(Counter::$name => self.$field,)*
                }
            }

            pub fn add(&mut self, counter: Counter, n: u64) {
                match counter {
                    $(Counter::$name => self.$field += n,)*
                }
            }
        }

        // A counter's discriminant is its field's slot: `count` adds at that offset.
        $(const _: () = assert!(core::mem::offset_of!(Counters, $field) == $idx * 8);)*
    };
}

// Indices are the slots of the pinned STATS map's value: never reuse or move one, only add (from `spare`).
counters! {
    TranslatedOut = 0, translated_out,
        "Packets from SNAT sources translated to the external address and sent out.";
    TranslatedIn = 1, translated_in,
        "Replies to translated flows translated back and sent to the client.";
    ForwardedOut = 2, forwarded_out,
        "Packets from forward (no-SNAT) sources routed out unchanged.";
    ForwardedIn = 3, forwarded_in,
        "Packets from outside to forward (no-SNAT) sources routed in unchanged.";
    PassedToHost = 4, passed_to_host,
        "Left to the instance's own stack: addressed to the instance, broadcast or multicast from outside, IPv6 link-local or multicast (neighbour discovery), or not IP.";
    TtlExpired = 5, ttl_expired,
        "TTL (IPv6: hop limit) would expire on forwarding: answered with ICMP or ICMPv6 time exceeded, as a router does.";
    DropNoPolicy = 6, dropped_no_policy,
        "Dropped: from a VPC source that no policy names (the gateway is no open relay).";
    DropUnsolicited = 7, dropped_unsolicited,
        "Dropped: from outside to the external address in the translation range, or to a SNAT source, matching no live translation.";
    DropMalformed = 8, dropped_malformed,
        "Dropped: truncated or inconsistent headers.";
    DropFragment = 9, dropped_fragment,
        "Dropped: a fragment of a SNAT source's datagram, or of a reply to one, that could not be translated (the slow path refused it or its first fragment was not seen).";
    DropPortExhausted = 10, dropped_port_exhausted,
        "Dropped: a new flow found no free port toward its remote endpoint (or the endpoint was found full moments ago); the client is told (ICMP administratively prohibited).";
    DropNoRoute = 11, dropped_no_route,
        "Dropped: no route out of the right interface (the kernel does not route between them either).";
    DropUnsupported = 12, dropped_unsupported_protocol,
        "Dropped: from a SNAT source, a protocol the gateway does not translate.";
    FlowsCreated = 13, flows_created,
        "New translations created.";
    FlowsRepaired = 14, flows_repaired,
        "Translations whose other half was missing, made whole again.";
    FlowsExpiredOnLookup = 15, flows_expired_on_lookup,
        "Expired translations found by a packet and replaced before the sweep reached them.";
    PortSearchesFailed = 16, port_searches_failed,
        "Searches for a free port that tried every allowed candidate and failed; the endpoint is then skipped for a moment.";
    DropInboundNoPolicy = 17, dropped_inbound_no_policy,
        "Dropped: from outside to an address behind the gateway that no forward policy names.";
    DropMartian = 18, dropped_martian,
        "Dropped: a source or destination no router forwards (0.0.0.0/8, 127.0.0.0/8, 240.0.0.0/4, a multicast source).";
    DropBroadcastMulticast = 19, dropped_broadcast_multicast,
        "Dropped: broadcast or multicast from the VPC, which a router never forwards or translates.";
    TooBig = 20, too_big,
        "Too big for the next hop with DF set (every IPv6 packet): answered with ICMP fragmentation needed or ICMPv6 Packet Too Big and the next hop's MTU.";
    IcmpErrorsRateLimited = 21, icmp_errors_rate_limited,
        "ICMP errors not sent because more than 1000 a second per CPU were due (the packet is dropped).";
    IcmpErrorsNotSent = 22, icmp_errors_not_sent,
        "ICMP errors not sent because the packet may not be answered (an ICMP error, a later fragment) or the error could not be built or routed (the packet is dropped).";
    DropRstImplausible = 23, dropped_rst_implausible,
        "Dropped: a TCP RST from outside whose sequence number does not fit its flow (a spoofer's); the flow lives on.";
    IcmpErrorsTranslatedIn = 24, icmp_errors_translated_in,
        "ICMP errors from outside about a translated flow, translated back and sent to the client.";
    IcmpErrorsTranslatedOut = 25, icmp_errors_translated_out,
        "ICMP errors from a VPC pod about a reply of a translated flow, translated and sent to the remote.";
    DropIcmpErrorNoFlow = 26, dropped_icmp_error_no_flow,
        "Dropped: an ICMP error quoting a translated port or a SNAT source's packet of no live translation.";
    DropTableFull = 27, dropped_table_full,
        "Dropped: a new flow found the flow table full of flows that saw a reply (established flows never give way); the client is told (ICMP administratively prohibited).";
    FlowsGivenUp = 28, flows_given_up,
        "Translations that never saw a reply (or expired), removed to make room for a new flow in a full table.";
    FragmentsTranslatedOut = 29, fragments_translated_out,
        "Later fragments of a SNAT source's datagram given its first fragment's translation and sent out.";
    FragmentsTranslatedIn = 30, fragments_translated_in,
        "Later fragments of a reply given its first fragment's translation back and sent to the client.";
    FragmentsHeld = 31, fragments_held,
        "Later fragments that came before their datagram's first fragment, handed to the agent to wait for it.";
    FragmentsReleased = 32, fragments_released,
        "Held fragments given their first fragment's translation by the agent and sent (counted by the agent).";
    FragmentsExpired = 33, fragments_expired,
        "Held fragments dropped by the agent: their first fragment was not translated within 2 s (or was the instance's own), or the hold limits were reached.";
    TooBigFragmented = 34, too_big_fragmented,
        "Packets too big for the next hop without DF, translated and handed to the agent to fragment.";
    FragmentsCreated = 35, fragments_created,
        "Fragments the agent made of those packets and sent.";
    SlowPathDropped = 36, slow_path_dropped,
        "Dropped: a packet for the agent (a held fragment, a packet to fragment) refused: over 10,000 a second per CPU, the agent's ring full, larger than 16384 bytes, or a GSO packet.";
    SlowPathSendFailed = 37, slow_path_send_failed,
        "Dropped by the agent: a released fragment or a made one could not be sent (no route, TTL expired, IP identification 0, or the kernel refused it).";
    FlowRecordsLost = 38, flow_records_lost,
        "Translation records the datapath could not hand to the agent (its ring was full): the translation itself went on.";
    RouteLookups = 39, route_lookups,
        "Route lookups asked of the kernel (bpf_fib_lookup): packets whose route was not cached, or no longer current (a route, rule, neighbour, address or link changed, or a second passed).";
    FlowCountsLost = 40, flow_counts_lost,
        "Packets of translations whose packet and byte counts could not be kept (the counts table was full): their ended records count less than they carried.";
}

/// Slots in a CPU's `Counters` (room to grow without changing the map's size).
pub const STATS_SLOTS: u32 = 64;

impl Default for Counters {
    fn default() -> Counters {
        // SAFETY: every field is a u64 or an array of them: all zeroes is a valid value.
        unsafe { core::mem::zeroed() }
    }
}

const _: () = assert!(size_of::<Counters>() == STATS_SLOTS as usize * 8);

#[cfg(feature = "user")]
// SAFETY: repr(C), only u64s: no padding, every bit pattern valid.
unsafe impl aya::Pod for Counters {}
