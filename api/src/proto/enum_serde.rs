//! How the state protocol's enum fields read and write in files. prost keeps an enum field as
//! its `i32`; these modules (named in `build.rs` for each field) write the value's name
//! without the enum's prefix (`STRICT`, not `PEER_MODE_STRICT` or `1`) and read the short name,
//! the full name in any case, an empty string (the zero value) or the number. A name no value
//! has is an error that lists the names there are, so a typo in a state file is refused with
//! its field, never read as the default.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};

use super::state::v1::{LoadBalancer, OutboundTrafficPolicy, PeerMode, Protocol, TlsMode};

/// A prost enum as these modules see it.
pub trait ProtoEnum: Sized + Copy + TryFrom<i32> + Into<i32> + 'static {
    /// The prefix every value's proto name starts with (`PEER_MODE_`).
    const PREFIX: &'static str;
    /// Every value, in declaration order.
    const VALUES: &'static [Self];
    /// The full proto name of the value.
    fn full_name(self) -> &'static str;

    /// The name without the prefix, as files write it.
    fn short_name(self) -> &'static str {
        let full = self.full_name();
        full.strip_prefix(Self::PREFIX).unwrap_or(full)
    }

    /// The value a file's name stands for: short or full name, any case; empty is zero.
    fn from_file_name(name: &str) -> Option<Self> {
        if name.is_empty() {
            return Self::try_from(0).ok();
        }
        Self::VALUES.iter().copied().find(|v| {
            v.short_name().eq_ignore_ascii_case(name) || v.full_name().eq_ignore_ascii_case(name)
        })
    }
}

macro_rules! proto_enum {
    ($ty:ty, $prefix:literal, [$($value:ident),+ $(,)?]) => {
        impl ProtoEnum for $ty {
            const PREFIX: &'static str = $prefix;
            const VALUES: &'static [Self] = &[$(<$ty>::$value),+];
            fn full_name(self) -> &'static str {
                self.as_str_name()
            }
        }
    };
}

proto_enum!(
    OutboundTrafficPolicy,
    "OUTBOUND_TRAFFIC_POLICY_",
    [AllowAny, RegistryOnly]
);
proto_enum!(PeerMode, "PEER_MODE_", [Permissive, Strict, Disable]);
proto_enum!(Protocol, "PROTOCOL_", [Detect, Http, Http2, Grpc, Tcp, Tls]);
proto_enum!(
    LoadBalancer,
    "LOAD_BALANCER_",
    [Unspecified, LeastRequest, RoundRobin, Random, Passthrough]
);
proto_enum!(
    TlsMode,
    "TLS_MODE_",
    [Unspecified, IstioMutual, Disable, Simple, Mutual]
);

fn write<E: ProtoEnum, S: Serializer>(value: i32, s: S) -> Result<S::Ok, S::Error> {
    match E::try_from(value) {
        Ok(e) => s.serialize_str(e.short_name()),
        // A value from a newer pilot: keep the number rather than lose it.
        Err(_) => s.serialize_i32(value),
    }
}

struct EnumVisitor<E>(PhantomData<E>);

impl<E: ProtoEnum> Visitor<'_> for EnumVisitor<E> {
    type Value = i32;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = E::VALUES.iter().map(|v| v.short_name()).collect();
        write!(f, "one of {}", names.join(", "))
    }

    fn visit_str<Er: de::Error>(self, v: &str) -> Result<i32, Er> {
        E::from_file_name(v)
            .map(Into::into)
            .ok_or_else(|| Er::invalid_value(de::Unexpected::Str(v), &self))
    }

    fn visit_i64<Er: de::Error>(self, v: i64) -> Result<i32, Er> {
        i32::try_from(v)
            .ok()
            .filter(|n| E::try_from(*n).is_ok())
            .ok_or_else(|| Er::invalid_value(de::Unexpected::Signed(v), &self))
    }

    fn visit_u64<Er: de::Error>(self, v: u64) -> Result<i32, Er> {
        i32::try_from(v)
            .ok()
            .filter(|n| E::try_from(*n).is_ok())
            .ok_or_else(|| Er::invalid_value(de::Unexpected::Unsigned(v), &self))
    }

    fn visit_unit<Er: de::Error>(self) -> Result<i32, Er> {
        Ok(0)
    }
}

fn read<'de, E: ProtoEnum, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    d.deserialize_any(EnumVisitor::<E>(PhantomData))
}

/// One module per enum, in the shape `#[serde(with = ...)]` wants.
macro_rules! field_module {
    ($name:ident, $ty:ty) => {
        #[doc = concat!("`", stringify!($ty), "` fields by name.")]
        pub mod $name {
            use super::*;

            /// Writes the value's short name.
            pub fn serialize<S: Serializer>(value: &i32, s: S) -> Result<S::Ok, S::Error> {
                write::<$ty, S>(*value, s)
            }

            /// Reads a name (or number) of the enum.
            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
                read::<$ty, D>(d)
            }
        }
    };
}

field_module!(outbound_traffic_policy, OutboundTrafficPolicy);
field_module!(peer_mode, PeerMode);
field_module!(protocol, Protocol);
field_module!(load_balancer, LoadBalancer);
field_module!(tls_mode, TlsMode);

/// `map<uint32, PeerMode>` fields by name.
pub mod peer_mode_map {
    use super::*;

    /// Writes each value's short name.
    pub fn serialize<S: Serializer>(map: &BTreeMap<u32, i32>, s: S) -> Result<S::Ok, S::Error> {
        struct Name(i32);
        impl serde::Serialize for Name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                write::<PeerMode, S>(self.0, s)
            }
        }
        let mut out = s.serialize_map(Some(map.len()))?;
        for (k, v) in map {
            out.serialize_entry(k, &Name(*v))?;
        }
        out.end()
    }

    /// Reads port → mode name.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u32, i32>, D::Error> {
        struct Mode(i32);
        impl<'de> serde::Deserialize<'de> for Mode {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                read::<PeerMode, D>(d).map(Mode)
            }
        }
        struct MapVisitor;
        impl<'de> Visitor<'de> for MapVisitor {
            type Value = BTreeMap<u32, i32>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of port to mode")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, Mode(v))) = access.next_entry::<u32, Mode>()? {
                    out.insert(k, v);
                }
                Ok(out)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(BTreeMap::new())
            }
        }
        d.deserialize_map(MapVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::super::state::v1 as state;

    #[test]
    fn enum_fields_read_and_write_as_names() {
        let yaml = "outboundTrafficPolicy: registry_only\n\
                    peerAuthentication: {mode: STRICT, portModes: {8080: PEER_MODE_DISABLE}}\n\
                    inboundPorts: [{port: 80, protocol: HTTP2}, {port: 81, protocol: ''}]\n\
                    services: [{hostname: a, trafficPolicy: {loadBalancer: ROUND_ROBIN, tlsMode: 1}}]\n";
        let s: state::ProxyState = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(
            s.outbound_traffic_policy(),
            state::OutboundTrafficPolicy::RegistryOnly
        );
        let pa = s.peer_authentication.as_ref().unwrap();
        assert_eq!(pa.mode(), state::PeerMode::Strict);
        assert_eq!(pa.port_modes[&8080], state::PeerMode::Disable as i32);
        assert_eq!(s.inbound_ports[0].protocol(), state::Protocol::Http2);
        assert_eq!(s.inbound_ports[1].protocol(), state::Protocol::Detect);
        let tp = s.services[0].traffic_policy.as_ref().unwrap();
        assert_eq!(tp.load_balancer(), state::LoadBalancer::RoundRobin);
        assert_eq!(tp.tls_mode(), state::TlsMode::IstioMutual);

        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["outboundTrafficPolicy"], "REGISTRY_ONLY");
        assert_eq!(json["peerAuthentication"]["portModes"]["8080"], "DISABLE");
        assert_eq!(json["inboundPorts"][1]["protocol"], "DETECT");
        assert_eq!(
            json["services"][0]["trafficPolicy"]["tlsMode"],
            "ISTIO_MUTUAL"
        );
        let back: state::ProxyState = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn unknown_names_are_refused_with_the_names_there_are() {
        let err = serde_json::from_str::<state::PeerAuthentication>(r#"{"mode":"SOMETIMES"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("SOMETIMES") && err.contains("PERMISSIVE, STRICT, DISABLE"),
            "{err}"
        );
        assert!(serde_json::from_str::<state::WorkloadPort>(r#"{"protocol":9}"#).is_err());
    }
}
