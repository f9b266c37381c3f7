//! Property: whatever loss, reordering and duplication a stream suffers on the way, every packet
//! that arrived is in the recording sample-exact at the place its timestamp says, and there is
//! silence exactly where packets were lost.

mod support;

use calltap::config::Config;
use calltap_lab::rtp_pcap::ulaw_decode as decode;
use proptest::prelude::*;
use support::calls::{write_pcap, Call};

/// mu-law byte for packet `i`: loud, and different for neighbours.
fn byte(i: u32) -> u8 {
    0x80 + (i % 100) as u8
}

#[derive(Debug, Clone)]
struct Damage {
    count: u32,
    lost: Vec<bool>,
    duplicated: Vec<bool>,
    swapped: Vec<bool>,
}

fn damage() -> impl Strategy<Value = Damage> {
    (40u32..120).prop_flat_map(|count| {
        let n = count as usize;
        (
            Just(count),
            prop::collection::vec(prop::bool::weighted(0.1), n),
            prop::collection::vec(prop::bool::weighted(0.1), n),
            prop::collection::vec(prop::bool::weighted(0.15), n),
        )
            .prop_map(|(count, lost, duplicated, swapped)| Damage {
                count,
                lost,
                duplicated,
                swapped,
            })
    })
}

fn run(d: &Damage, case: u64) -> Result<(), TestCaseError> {
    let mut c = Call::new(&format!("prop-{case}@test"));
    c.invite(0, "sendrecv", false)
        .respond(100, 200, "OK", Some("sendrecv"))
        .ack(110);
    let first_rtp = c.packets.len();
    let lost = d.lost.clone();
    c.rtp(
        true,
        300,
        0,
        d.count,
        |i| vec![byte(i); 160],
        move |i| lost[i as usize],
    );
    let rtp_end = c.packets.len();
    // Reorder: swap arrival times of neighbours; duplicate: the same frame again 30 ms later.
    let arrived: Vec<u32> = (0..d.count).filter(|i| !d.lost[*i as usize]).collect();
    for (k, i) in arrived
        .iter()
        .enumerate()
        .take(arrived.len().saturating_sub(1))
    {
        if d.swapped[*i as usize] {
            let (a, b) = (first_rtp + k, first_rtp + k + 1);
            let t = c.packets[a].at_ns;
            c.packets[a].at_ns = c.packets[b].at_ns;
            c.packets[b].at_ns = t;
        }
    }
    let mut dups = Vec::new();
    for (k, i) in arrived.iter().enumerate() {
        if d.duplicated[*i as usize] {
            let p = &c.packets[first_rtp + k];
            dups.push(support::calls::Packet {
                at_ns: p.at_ns + 30_000_000,
                frame: p.frame.clone(),
            });
        }
    }
    assert_eq!(rtp_end - first_rtp, arrived.len());
    c.packets.extend(dups);
    c.bye(300 + u64::from(d.count) * 20 + 500);

    let dir = std::env::temp_dir().join(format!("calltap-prop-{}-{case}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let pcap = dir.join("c.pcap");
    write_pcap(&pcap, &[&c]);
    let mut cfg = Config::load_with_env(None, &[]).expect("config");
    cfg.storage.data_dir = dir.join("data");
    cfg.capture.workers = 1;
    let mut cdrs = Vec::new();
    calltap::daemon::replay::replay(&cfg, &[pcap], |cdr| cdrs.push(cdr.clone()));
    prop_assert_eq!(cdrs.len(), 1);
    let rec = cdrs[0].recording.clone().expect("recording");
    let mut wav = hound::WavReader::open(&rec.path).expect("wav");
    let samples: Vec<i16> = wav
        .samples::<i16>()
        .collect::<Result<_, _>>()
        .expect("samples");
    let left: Vec<i16> = samples.iter().step_by(2).copied().collect();
    let _ = std::fs::remove_dir_all(&dir);

    let Some(&i_min) = arrived.first() else {
        prop_assert!(left.iter().all(|s| *s == 0));
        return Ok(());
    };
    let i_max = *arrived.last().unwrap_or(&i_min);
    let start = left.iter().position(|s| *s != 0).expect("audio present");
    for i in i_min..=i_max {
        let pos = start + (i - i_min) as usize * 160;
        prop_assert!(pos + 160 <= left.len(), "packet {} beyond the file", i);
        let got = &left[pos..pos + 160];
        if d.lost[i as usize] {
            prop_assert!(
                got.iter().all(|s| *s == 0),
                "lost packet {} is not silence",
                i
            );
        } else {
            let want = decode(byte(i));
            prop_assert!(
                got.iter().all(|s| *s == want),
                "packet {} not sample-exact at {}",
                i,
                pos
            );
        }
    }
    let end = start + (i_max - i_min + 1) as usize * 160;
    prop_assert!(
        left[end..].iter().all(|s| *s == 0),
        "audio after the last packet"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn arrived_packets_are_exact_and_lost_ones_silent(d in damage(), case in any::<u64>()) {
        run(&d, case)?;
    }
}
