//! One BFD session (RFC 5880 section 6), asynchronous mode, without I/O: `receive` and `on_timer` take the current
//! time and return what to transmit; `next_deadline` says when to call `on_timer` again.

use std::time::{Duration, Instant};

use super::packet::{ControlPacket, Diagnostic, Discard, State};

/// While a session is not Up it must not ask to send faster than once a second (section 6.8.3).
pub const SLOW_TX: Duration = Duration::from_secs(1);

/// Active sessions start sending at once; passive ones wait for the peer's first packet (section 6.1), as the
/// reference's gateway instances wait for OVN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Active,
    Passive,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timers {
    pub desired_min_tx: Duration,
    pub required_min_rx: Duration,
    pub detect_mult: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateChange {
    pub from: State,
    pub to: State,
    pub diagnostic: Diagnostic,
}

/// What the caller must do after feeding the session.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Output {
    pub transmit: Option<ControlPacket>,
    pub change: Option<StateChange>,
}

/// A snapshot for `veg bfd status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub role: Role,
    pub state: State,
    pub remote_state: State,
    pub local_discriminator: u32,
    pub remote_discriminator: u32,
    pub diagnostic: Diagnostic,
    /// The interval we transmit at (before jitter) and the time without packets after which we declare Down.
    pub transmit_interval: Duration,
    pub detection_time: Duration,
    pub remote_detect_mult: u8,
    pub last_state_change: Instant,
    /// State changes since the session was created: a flapping session shows as a count that keeps growing.
    pub transitions: u64,
}

pub struct Session {
    role: Role,
    local_discriminator: u32,
    state: State,
    remote_state: State,
    remote_discriminator: u32,
    diagnostic: Diagnostic,
    /// What the operator asked for; advertised once Up.
    configured: Timers,
    /// bfd.DesiredMinTxInterval / RequiredMinRxInterval / DetectMult as advertised in our packets.
    desired_min_tx: Duration,
    required_min_rx: Duration,
    /// The values actually in force while a Poll Sequence is running (section 6.8.3): a raised transmit interval
    /// and a lowered receive interval only take effect once the peer has acknowledged them.
    tx_in_force: Duration,
    rx_in_force: Duration,
    poll_active: bool,
    remote_min_rx: Duration,
    remote_desired_min_tx: Duration,
    remote_detect_mult: u8,
    next_tx: Option<Instant>,
    detect_deadline: Option<Instant>,
    last_state_change: Instant,
    transitions: u64,
    rng: u64,
}

impl Session {
    pub fn new(local_discriminator: u32, role: Role, timers: Timers, now: Instant) -> Session {
        assert!(
            local_discriminator != 0,
            "a BFD discriminator must be non-zero"
        );
        let slow = timers.desired_min_tx.max(SLOW_TX);
        Session {
            role,
            local_discriminator,
            state: State::Down,
            remote_state: State::Down,
            remote_discriminator: 0,
            diagnostic: Diagnostic::None,
            configured: timers,
            desired_min_tx: slow,
            required_min_rx: timers.required_min_rx,
            tx_in_force: slow,
            rx_in_force: timers.required_min_rx,
            poll_active: false,
            // Section 6.8.1: bfd.RemoteMinRxInterval starts at 1 microsecond.
            remote_min_rx: Duration::from_micros(1),
            remote_desired_min_tx: Duration::ZERO,
            remote_detect_mult: 0,
            next_tx: (role == Role::Active).then_some(now),
            detect_deadline: None,
            last_state_change: now,
            transitions: 0,
            rng: 0x9e37_79b9_7f4a_7c15 ^ local_discriminator as u64,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn local_discriminator(&self) -> u32 {
        self.local_discriminator
    }

    pub fn poll_active(&self) -> bool {
        self.poll_active
    }

    /// The interval between our packets before jitter: the larger of what we want and what the peer accepts.
    pub fn transmit_interval(&self) -> Duration {
        self.tx_in_force.max(self.remote_min_rx)
    }

    /// Section 6.8.4: the peer's multiplier times its agreed transmit interval. Until the session is Up, the
    /// peer may send at the slow-start pace of one packet a second whatever it advertises (OVN 23.03 does), so a
    /// session coming up waits at least that pace before giving up.
    pub fn detection_time(&self) -> Duration {
        let agreed = self.rx_in_force.max(self.remote_desired_min_tx);
        let interval = if self.state == State::Up {
            agreed
        } else {
            agreed.max(SLOW_TX)
        };
        interval * self.remote_detect_mult as u32
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        match (self.next_tx, self.detect_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn status(&self) -> Status {
        Status {
            role: self.role,
            state: self.state,
            remote_state: self.remote_state,
            local_discriminator: self.local_discriminator,
            remote_discriminator: self.remote_discriminator,
            diagnostic: self.diagnostic,
            transmit_interval: self.transmit_interval(),
            detection_time: self.detection_time(),
            remote_detect_mult: self.remote_detect_mult,
            last_state_change: self.last_state_change,
            transitions: self.transitions,
        }
    }

    /// A packet for this session (already decoded and matched to it). Section 6.8.6.
    pub fn receive(&mut self, packet: &ControlPacket, now: Instant) -> Result<Output, Discard> {
        if packet.your_discriminator != 0 && packet.your_discriminator != self.local_discriminator {
            return Err(Discard::UnknownDiscriminator);
        }
        if self.state == State::AdminDown {
            return Err(Discard::SessionAdminDown);
        }
        self.remote_discriminator = packet.my_discriminator;
        self.remote_state = packet.state;
        self.remote_min_rx = Duration::from_micros(packet.required_min_rx_us as u64);
        self.remote_desired_min_tx = Duration::from_micros(packet.desired_min_tx_us as u64);
        self.remote_detect_mult = packet.detect_mult;
        if packet.final_ && self.poll_active {
            self.poll_active = false;
            self.tx_in_force = self.desired_min_tx;
            self.rx_in_force = self.required_min_rx;
        }
        let next = match (self.state, packet.state) {
            (State::Down, State::AdminDown) => None,
            (_, State::AdminDown) => Some((State::Down, Diagnostic::NeighborSignaledSessionDown)),
            (State::Down, State::Down) => Some((State::Init, Diagnostic::None)),
            (State::Down, State::Init) | (State::Init, State::Init | State::Up) => {
                Some((State::Up, Diagnostic::None))
            }
            (State::Up, State::Down) => {
                Some((State::Down, Diagnostic::NeighborSignaledSessionDown))
            }
            _ => None,
        };
        let change = next.map(|(to, diagnostic)| self.change_state(to, diagnostic, now));
        self.detect_deadline = Some(now + self.detection_time());
        // A passive session starts sending once it has heard from its peer.
        if self.next_tx.is_none() && self.remote_min_rx > Duration::ZERO {
            self.schedule_tx(now);
        }
        self.keep_tx_within_interval(now);
        // Answer a Poll at once with a Final; tell the peer of our own state change at once too.
        let transmit = if packet.poll {
            Some(self.packet(true))
        } else if change.is_some() {
            self.schedule_tx(now);
            Some(self.packet(false))
        } else {
            None
        };
        Ok(Output { transmit, change })
    }

    /// Timers: the periodic transmission and the detection time.
    pub fn on_timer(&mut self, now: Instant) -> Output {
        let mut output = Output::default();
        if self.detect_deadline.is_some_and(|deadline| now >= deadline) {
            self.detect_deadline = None;
            // Section 6.8.1: the remote discriminator is forgotten once a Detection Time passes in silence.
            self.remote_discriminator = 0;
            self.remote_state = State::Down;
            if matches!(self.state, State::Init | State::Up) {
                output.change = Some(self.change_state(
                    State::Down,
                    Diagnostic::ControlDetectionTimeExpired,
                    now,
                ));
            }
        }
        if output.change.is_some() || self.next_tx.is_some_and(|t| now >= t) {
            output.transmit = Some(self.packet(false));
            self.schedule_tx(now);
        }
        output
    }

    /// New timers from the operator. Once Up they are negotiated with a Poll Sequence (section 6.8.3).
    pub fn set_timers(&mut self, timers: Timers, now: Instant) {
        self.configured = timers;
        let desired = if self.state == State::Up {
            timers.desired_min_tx
        } else {
            timers.desired_min_tx.max(SLOW_TX)
        };
        self.advertise(desired, timers.required_min_rx);
        self.keep_tx_within_interval(now);
    }

    /// Stop (AdminDown, diagnostic 7) or resume (Down) the session. A change comes with the packet that tells the
    /// peer at once, so that it need not wait out its detection time.
    pub fn set_admin_down(&mut self, down: bool, now: Instant) -> Output {
        let change = match (down, self.state) {
            (true, State::AdminDown) | (false, State::Down | State::Init | State::Up) => {
                return Output::default();
            }
            (true, _) => self.change_state(State::AdminDown, Diagnostic::AdministrativelyDown, now),
            (false, State::AdminDown) => self.change_state(State::Down, Diagnostic::None, now),
        };
        self.schedule_tx(now);
        Output {
            transmit: Some(self.packet(false)),
            change: Some(change),
        }
    }

    fn change_state(&mut self, to: State, diagnostic: Diagnostic, now: Instant) -> StateChange {
        let change = StateChange {
            from: self.state,
            to,
            diagnostic,
        };
        self.state = to;
        self.diagnostic = diagnostic;
        self.last_state_change = now;
        self.transitions += 1;
        // Slow start: fast timers only while Up. Coming Up, the change is negotiated with a Poll Sequence.
        let desired = if to == State::Up {
            self.configured.desired_min_tx
        } else {
            self.configured.desired_min_tx.max(SLOW_TX)
        };
        self.advertise(desired, self.configured.required_min_rx);
        change
    }

    /// Advertise new intervals. Outside Up they apply at once; when Up a Poll Sequence starts, and a raised
    /// transmit interval or a lowered receive interval waits for the peer's Final.
    fn advertise(&mut self, desired_min_tx: Duration, required_min_rx: Duration) {
        let changed =
            desired_min_tx != self.desired_min_tx || required_min_rx != self.required_min_rx;
        self.desired_min_tx = desired_min_tx;
        self.required_min_rx = required_min_rx;
        if self.state == State::Up && changed {
            self.poll_active = true;
            self.tx_in_force = self.tx_in_force.min(desired_min_tx);
            self.rx_in_force = self.rx_in_force.max(required_min_rx);
        } else if self.state != State::Up {
            self.poll_active = false;
            self.tx_in_force = desired_min_tx;
            self.rx_in_force = required_min_rx;
        }
    }

    fn packet(&self, final_: bool) -> ControlPacket {
        ControlPacket {
            diagnostic: self.diagnostic,
            state: self.state,
            // A packet never carries both Poll and Final.
            poll: self.poll_active && !final_,
            final_,
            control_plane_independent: false,
            demand: false,
            detect_mult: self.configured.detect_mult,
            my_discriminator: self.local_discriminator,
            your_discriminator: self.remote_discriminator,
            desired_min_tx_us: self.desired_min_tx.as_micros() as u32,
            required_min_rx_us: self.required_min_rx.as_micros() as u32,
            required_min_echo_rx_us: 0,
        }
    }

    /// When the interval shrinks (coming Up after slow start, or the peer accepting more), a packet scheduled at the
    /// old pace would arrive after the peer's new, shorter detection time: bring it forward.
    fn keep_tx_within_interval(&mut self, now: Instant) {
        if self
            .next_tx
            .is_some_and(|t| t > now + self.transmit_interval())
        {
            self.schedule_tx(now);
        }
    }

    /// Section 6.8.7: each interval is reduced by a random 0-25% (10-25% with a multiplier of 1), so that
    /// sessions do not synchronise. A peer asking for no packets (RemoteMinRx 0) gets none.
    fn schedule_tx(&mut self, now: Instant) {
        if self.remote_min_rx.is_zero() {
            self.next_tx = None;
            return;
        }
        // xorshift64: jitter needs no cryptographic quality, and a seeded generator keeps tests reproducible.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let max_percent = if self.configured.detect_mult == 1 {
            90
        } else {
            100
        };
        let percent = 75 + self.rng % (max_percent - 75 + 1);
        self.next_tx = Some(now + self.transmit_interval() * percent as u32 / 100);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn timers(tx_ms: u64, rx_ms: u64, mult: u8) -> Timers {
        Timers {
            desired_min_tx: Duration::from_millis(tx_ms),
            required_min_rx: Duration::from_millis(rx_ms),
            detect_mult: mult,
        }
    }

    fn peer_packet(state: State, your: u32) -> ControlPacket {
        ControlPacket {
            diagnostic: Diagnostic::None,
            state,
            poll: false,
            final_: false,
            control_plane_independent: false,
            demand: false,
            detect_mult: 3,
            my_discriminator: 77,
            your_discriminator: your,
            desired_min_tx_us: 100_000,
            required_min_rx_us: 100_000,
            required_min_echo_rx_us: 0,
        }
    }

    /// Drive two sessions against each other until nothing is left to deliver at `now`.
    fn exchange(a: &mut Session, b: &mut Session, first: ControlPacket, now: Instant) {
        let mut in_flight = vec![(true, first)];
        while let Some((to_b, packet)) = in_flight.pop() {
            let target = if to_b { &mut *b } else { &mut *a };
            if let Ok(out) = target.receive(&packet, now)
                && let Some(reply) = out.transmit
            {
                in_flight.push((!to_b, reply));
            }
        }
    }

    #[test]
    fn every_transition_of_section_6_8_6() {
        use State::*;
        let cases = [
            (Down, Down, Init, Diagnostic::None),
            (Down, Init, Up, Diagnostic::None),
            (Down, Up, Down, Diagnostic::None),
            (Down, AdminDown, Down, Diagnostic::None),
            (Init, Down, Init, Diagnostic::None),
            (Init, Init, Up, Diagnostic::None),
            (Init, Up, Up, Diagnostic::None),
            (
                Init,
                AdminDown,
                Down,
                Diagnostic::NeighborSignaledSessionDown,
            ),
            (Up, Down, Down, Diagnostic::NeighborSignaledSessionDown),
            (Up, Init, Up, Diagnostic::None),
            (Up, Up, Up, Diagnostic::None),
            (Up, AdminDown, Down, Diagnostic::NeighborSignaledSessionDown),
        ];
        for (from, received, expected, diagnostic) in cases {
            let now = Instant::now();
            let mut s = Session::new(1, Role::Active, timers(100, 100, 3), now);
            // Bring the session to `from` first.
            if from != Down {
                s.receive(&peer_packet(Down, 0), now).unwrap();
            }
            if from == Up {
                s.receive(&peer_packet(Up, 1), now).unwrap();
            }
            assert_eq!(s.state(), from);
            let transitions = s.status().transitions;
            s.receive(&peer_packet(received, 1), now).unwrap();
            assert_eq!(s.state(), expected, "{from} + received {received}");
            let counted = s.status().transitions - transitions;
            assert_eq!(
                counted,
                u64::from(expected != from),
                "{from} + received {received}"
            );
            if expected != from {
                assert_eq!(
                    s.status().diagnostic,
                    diagnostic,
                    "{from} + received {received}"
                );
            }
        }
    }

    #[test]
    fn a_passive_and_an_active_session_come_up() {
        let now = Instant::now();
        let mut active = Session::new(10, Role::Active, timers(100, 100, 3), now);
        let mut passive = Session::new(20, Role::Passive, timers(100, 100, 3), now);
        assert_eq!(
            passive.on_timer(now).transmit,
            None,
            "a passive session waits for its peer"
        );
        let first = active
            .on_timer(now)
            .transmit
            .expect("an active session sends at once");
        assert_eq!((first.state, first.your_discriminator), (State::Down, 0));
        assert_eq!(
            first.desired_min_tx_us, 1_000_000,
            "slow start: at most one packet a second until Up"
        );
        exchange(&mut active, &mut passive, first, now);
        assert_eq!((active.state(), passive.state()), (State::Up, State::Up));
        assert_eq!(active.status().remote_discriminator, 20);
        // Coming Up, each side negotiates the configured 100 ms with a Poll Sequence. The active side's Poll rode
        // on its Up packet and was answered during the exchange; the passive side's is still open.
        assert!(!active.poll_active() && passive.poll_active());
        assert_eq!(active.transmit_interval(), 100 * MS);
        let at = passive.next_deadline().unwrap();
        let poll = passive.on_timer(at).transmit.unwrap();
        assert!(poll.poll && poll.desired_min_tx_us == 100_000);
        let answer = active.receive(&poll, at).unwrap().transmit.unwrap();
        assert!(
            answer.final_ && !answer.poll,
            "a Poll is answered with a Final"
        );
        passive.receive(&answer, at).unwrap();
        assert!(!passive.poll_active());
        assert_eq!(passive.transmit_interval(), 100 * MS);
    }

    #[test]
    fn silence_for_a_detection_time_brings_the_session_down() {
        let now = Instant::now();
        let mut s = Session::new(1, Role::Active, timers(100, 300, 3), now);
        s.receive(&peer_packet(State::Init, 1), now).unwrap();
        assert_eq!(s.state(), State::Up);
        // 3 x max(our 300 ms, their 100 ms).
        assert_eq!(s.detection_time(), 900 * MS);
        assert_eq!(s.on_timer(now + 899 * MS).change, None);
        let out = s.on_timer(now + 900 * MS);
        assert_eq!(
            out.change.unwrap().diagnostic,
            Diagnostic::ControlDetectionTimeExpired
        );
        assert_eq!(s.state(), State::Down);
        assert_eq!(
            s.status().remote_discriminator,
            0,
            "forgotten after a silent detection time"
        );
        assert_eq!(
            out.transmit.unwrap().state,
            State::Down,
            "the peer hears of it at once"
        );
        assert_eq!(s.transmit_interval(), SLOW_TX, "back to slow start");
    }

    #[test]
    fn timers_are_negotiated() {
        let now = Instant::now();
        let mut s = Session::new(1, Role::Active, timers(100, 400, 3), now);
        s.receive(&peer_packet(State::Init, 1), now).unwrap();
        let mut done = peer_packet(State::Up, 1);
        done.final_ = true;
        s.receive(&done, now).unwrap();
        // We send at max(our 100 ms, their required 100 ms); they must hear from us... and we from them at our 400.
        assert_eq!(s.transmit_interval(), 100 * MS);
        assert_eq!(s.detection_time(), 1200 * MS);
        let mut slow_peer = done;
        slow_peer.final_ = false;
        slow_peer.required_min_rx_us = 250_000;
        slow_peer.desired_min_tx_us = 500_000;
        s.receive(&slow_peer, now).unwrap();
        assert_eq!(s.transmit_interval(), 250 * MS);
        assert_eq!(s.detection_time(), 1500 * MS);
    }

    #[test]
    fn a_changed_timer_waits_for_the_final() {
        let now = Instant::now();
        let mut s = Session::new(1, Role::Active, timers(100, 100, 3), now);
        s.receive(&peer_packet(State::Init, 1), now).unwrap();
        let mut final_packet = peer_packet(State::Up, 1);
        final_packet.final_ = true;
        s.receive(&final_packet, now).unwrap();
        assert!(!s.poll_active());
        // Slower transmission and faster reception both wait for the peer's Final.
        s.set_timers(timers(300, 50, 3), now);
        assert!(s.poll_active());
        assert_eq!(
            s.transmit_interval(),
            100 * MS,
            "a raised tx interval waits for the Final"
        );
        assert_eq!(
            s.detection_time(),
            300 * MS,
            "a lowered rx interval waits for the Final"
        );
        let at = s.next_deadline().unwrap();
        let packet = s.on_timer(at).transmit.unwrap();
        assert!(packet.poll);
        assert_eq!(
            (packet.desired_min_tx_us, packet.required_min_rx_us),
            (300_000, 50_000)
        );
        s.receive(&final_packet, at).unwrap();
        assert!(!s.poll_active());
        assert_eq!(s.transmit_interval(), 300 * MS);
        assert_eq!(s.detection_time(), 300 * MS, "3 x max(50 ms, their 100 ms)");
    }

    #[test]
    fn jitter_stays_within_the_rfc_bounds() {
        for (mult, low, high) in [(3u8, 75u64, 100u64), (1, 75, 90)] {
            let now = Instant::now();
            let mut s = Session::new(5, Role::Active, timers(1000, 1000, mult), now);
            let mut at = now;
            for _ in 0..200 {
                s.on_timer(at);
                let next = s.next_deadline().unwrap();
                let gap = (next - at).as_millis() as u64;
                assert!(
                    (low * 10..=high * 10).contains(&gap),
                    "mult {mult}: gap {gap} ms"
                );
                at = next;
            }
        }
    }

    #[test]
    fn packets_for_others_or_while_admin_down_are_discarded() {
        let now = Instant::now();
        let mut s = Session::new(1, Role::Active, timers(100, 100, 3), now);
        assert_eq!(
            s.receive(&peer_packet(State::Init, 99), now),
            Err(Discard::UnknownDiscriminator)
        );
        assert_eq!(s.state(), State::Down);
        let out = s.set_admin_down(true, now);
        let change = out.change.unwrap();
        assert_eq!(
            (change.to, change.diagnostic),
            (State::AdminDown, Diagnostic::AdministrativelyDown)
        );
        let told = out.transmit.expect("the peer is told at once");
        assert_eq!(
            (told.state, told.diagnostic),
            (State::AdminDown, Diagnostic::AdministrativelyDown)
        );
        assert_eq!(
            s.receive(&peer_packet(State::Down, 0), now),
            Err(Discard::SessionAdminDown)
        );
        assert_eq!(s.set_admin_down(false, now).change.unwrap().to, State::Down);
    }

    #[test]
    fn a_peer_asking_for_no_packets_gets_none() {
        let now = Instant::now();
        let mut s = Session::new(1, Role::Passive, timers(100, 100, 3), now);
        let mut quiet = peer_packet(State::Down, 0);
        quiet.required_min_rx_us = 0;
        s.receive(&quiet, now).unwrap();
        // Within the detection time nothing would be sent but periodic packets, and there are none.
        assert_eq!(s.on_timer(now + 200 * MS).transmit, None);
        assert_eq!(
            s.next_deadline(),
            Some(now + 3 * SLOW_TX),
            "only the detection timer is left (at the slow-start pace: the session is not Up)"
        );
    }

    #[test]
    fn a_session_coming_up_waits_out_the_slow_start_pace_then_detects_fast() {
        // OVN 23.03 advertises 100 ms while it still sends one packet a second.
        let now = Instant::now();
        let mut s = Session::new(1, Role::Passive, timers(100, 100, 3), now);
        s.receive(&peer_packet(State::Down, 0), now).unwrap();
        assert_eq!(s.state(), State::Init);
        assert_eq!(
            s.detection_time(),
            3 * SLOW_TX,
            "Init: three slow-start packets may be missed"
        );
        assert_eq!(
            s.on_timer(now + 900 * MS).change,
            None,
            "still Init after 900 ms of silence"
        );
        s.receive(&peer_packet(State::Init, 1), now + 950 * MS)
            .unwrap();
        assert_eq!(s.state(), State::Up);
        assert_eq!(s.detection_time(), 300 * MS, "Up: 3 x 100 ms");
    }
}
