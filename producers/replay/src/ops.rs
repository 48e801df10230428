//! Operator views: consumer groups' lag, and moving a group back in time to rebuild what it
//! keeps. The tables are pure functions of what the cluster said, so they are tested
//! without a broker.

use platform::kafka::groups::{Group, Moved, PartitionLag};

/// `herald lag`: one line per partition a group has committed on, in records and seconds.
pub fn lag_table(lags: &[(Group, Vec<PartitionLag>)]) -> String {
    let mut out =
        String::from("group\tstate\tmembers\ttopic\tpartition\tcommitted\tend\tlag\tlag_s\n");
    for (group, partitions) in lags {
        if partitions.is_empty() {
            out.push_str(&format!(
                "{}\t{}\t{}\t-\t-\t-\t-\t-\t-\n",
                group.name, group.state, group.members
            ));
        }
        for p in partitions {
            let seconds = p
                .lag_seconds
                .map_or_else(|| "?".to_string(), |s| format!("{s:.1}"));
            out.push_str(&format!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{seconds}\n",
                group.name,
                group.state,
                group.members,
                p.topic,
                p.partition,
                p.committed,
                p.end,
                p.lag
            ));
        }
    }
    out
}

/// `herald reprocess`: each partition's offset before and after, and how many records the
/// group will read again.
pub fn moves_table(moves: &[Moved]) -> String {
    let mut out = String::from("topic\tpartition\tbefore\tafter\tto_read_again\n");
    let mut again = 0;
    for m in moves {
        let delta = (m.before - m.after).max(0);
        again += delta;
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{delta}\n",
            m.topic, m.partition, m.before, m.after
        ));
    }
    out.push_str(&format!("total\t\t\t\t{again}\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_lines_name_the_group_and_an_unknown_age() {
        let group = Group {
            name: "audit-log".into(),
            state: "Stable".into(),
            members: 1,
        };
        let lag = PartitionLag {
            topic: "orders".into(),
            partition: 2,
            committed: 10,
            end: 15,
            lag: 5,
            lag_seconds: None,
        };
        let table = lag_table(&[(group, vec![lag])]);
        assert_eq!(
            table.lines().nth(1),
            Some("audit-log\tStable\t1\torders\t2\t10\t15\t5\t?")
        );
    }

    #[test]
    fn moves_count_what_is_read_again() {
        let moves = [
            Moved {
                topic: "orders".into(),
                partition: 0,
                before: 100,
                after: 40,
            },
            Moved {
                topic: "orders".into(),
                partition: 1,
                before: 7,
                after: 7,
            },
        ];
        assert!(moves_table(&moves).ends_with("total\t\t\t\t60\n"));
    }
}
