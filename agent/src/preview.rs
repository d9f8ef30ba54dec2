//! Previews: what applying a commit would change in this cluster, asked
//! by the coordinator (`ferry diff`, `rollout start --preview`). One at a
//! time (another is answered "busy" by the link), within a deadline, with
//! its own Git cache and its own applier, so a preview never waits for the
//! sync loop nor makes it wait. Only dry-runs reach the API server: a
//! preview writes nothing. The answer is bounded (objects, fields, sizes).

use crate::apply::{Applier, Previewed};
use crate::cluster::Cluster;
use crate::read::{Reader, Unread};
use crate::state::InventoryEntry;
use ferry_proto::Assignment;
use ferry_proto::v1::{
    ChangeAction, FieldChange, ObjectChange, ObjectProblem, Preview, PreviewRequest,
};
use prost::Message;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// How long one preview may take.
pub const DEADLINE: Duration = Duration::from_secs(60);
/// At most this many changed objects are listed…
const MAX_CHANGES: usize = 300;
/// …each with at most this many fields.
const MAX_FIELDS: usize = 30;
/// An answer stays well under the coordinator's 4 MiB message cap.
const MAX_BYTES: usize = 2 << 20;

/// What previews need of the agent.
pub struct Previewer {
    pub reader: Reader,
    pub cluster: Arc<Cluster>,
    pub cluster_name: String,
    pub namespaces: Vec<String>,
    pub verify: Option<(PathBuf, ferry_proto::verify::Mode)>,
    /// The inventory the agent keeps (what a prune would remove is judged
    /// against it).
    pub inventory: watch::Receiver<Vec<InventoryEntry>>,
}

fn failed(id: String, error: String) -> Preview {
    Preview {
        id,
        error,
        ..Preview::default()
    }
}

/// Runs until `stop`: answers each request in turn.
pub async fn run(
    p: Previewer,
    mut requests: mpsc::Receiver<PreviewRequest>,
    answers: mpsc::Sender<Preview>,
    stop: CancellationToken,
) {
    loop {
        let req = tokio::select! {
            _ = stop.cancelled() => return,
            r = requests.recv() => match r { Some(r) => r, None => return },
        };
        let id = req.id.clone();
        let answer = match tokio::time::timeout(DEADLINE, p.preview(req, &stop)).await {
            Ok(a) => a,
            Err(_) => failed(
                id,
                format!("the preview took over {} s", DEADLINE.as_secs()),
            ),
        };
        let _ = answers.send(answer).await;
    }
}

impl Previewer {
    async fn preview(&self, req: PreviewRequest, stop: &CancellationToken) -> Preview {
        let wire = ferry_proto::v1::Assignment {
            repo_url: req.repo_url.clone(),
            commit: req.commit.clone(),
            path: req.path.clone(),
            generation: 1,
            options: Some(ferry_proto::v1::AssignmentOptions {
                allow_mass_prune: req.allow_mass_prune,
            }),
            labels: req.labels.clone(),
            site: req.site.clone(),
            ..Default::default()
        };
        let a = match Assignment::try_from(wire) {
            Ok(a) => a,
            Err(e) => return failed(req.id, format!("refused: {e}")),
        };
        let span = tracing::info_span!("preview", commit = %a.commit.short());
        let _guard = span.enter();
        let objects = match self.reader.read(&a, stop).await {
            Ok(r) => r.objects,
            Err(Unread::Stopped) => return failed(req.id, "the agent is stopping".into()),
            Err(Unread::Git(why) | Unread::Lagging(why)) => return failed(req.id, why),
            Err(Unread::Invalid { message, problems }) => {
                return Preview {
                    id: req.id,
                    rejected: problems.into_iter().map(problem).collect(),
                    error: message,
                    ..Preview::default()
                };
            }
        };
        let mut signer = String::new();
        if let Some((dir, mode)) = &self.verify {
            match self
                .reader
                .verify(dir.clone(), *mode, &a.repo_url, &a.commit)
                .await
            {
                Ok((s, _)) => signer = s.to_string(),
                Err(why) => {
                    return failed(req.id, format!("{why}: this cluster would not apply it"));
                }
            }
        }
        let mut applier = Applier::new(self.cluster.client(), self.cluster_name.clone());
        applier.namespaces = self.namespaces.clone();
        let inventory = self.inventory.borrow().clone();
        match applier
            .preview(&objects, &inventory, a.allow_mass_prune)
            .await
        {
            Ok(p) => {
                let mut answer = answer(req.id, p);
                answer.signer = signer;
                answer
            }
            Err(e) => failed(req.id, e.to_string()),
        }
    }
}

fn problem(p: crate::render::Problem) -> ObjectProblem {
    ObjectProblem {
        object: p.object,
        source: p.source,
        message: p.message,
    }
}

/// The wire answer, cut to its bounds.
fn answer(id: String, p: Previewed) -> Preview {
    let mut changes: Vec<ObjectChange> = vec![];
    let mut truncated = false;
    let change = |object: String, action: ChangeAction, fields: Vec<FieldChange>| ObjectChange {
        object,
        action: action as i32,
        fields,
    };
    for o in p.creates {
        changes.push(change(o, ChangeAction::Create, vec![]));
    }
    for (o, fields) in p.updates {
        truncated |= fields.len() > MAX_FIELDS;
        let fields = fields
            .into_iter()
            .take(MAX_FIELDS)
            .map(|(path, before, after)| FieldChange {
                path,
                before,
                after,
            })
            .collect();
        changes.push(change(o, ChangeAction::Update, fields));
    }
    for o in p.prunes {
        changes.push(change(o, ChangeAction::Prune, vec![]));
    }
    truncated |= changes.len() > MAX_CHANGES;
    changes.truncate(MAX_CHANGES);
    let mut answer = Preview {
        id,
        changes,
        unchanged: p.unchanged as u32,
        prune_refused: p.prune_refused.unwrap_or_default(),
        rejected: p.rejected.into_iter().map(problem).collect(),
        truncated,
        ..Preview::default()
    };
    // Still too big: field details go first, from the last object back.
    let mut i = answer.changes.len();
    while answer.encoded_len() > MAX_BYTES && i > 0 {
        i -= 1;
        answer.changes[i].fields.clear();
        answer.truncated = true;
    }
    answer.rejected.truncate(100);
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn big(objects: usize, fields: usize, value: usize) -> Previewed {
        Previewed {
            creates: vec![],
            updates: (0..objects)
                .map(|o| {
                    let f = (0..fields)
                        .map(|i| (format!("data.k{i}"), "x".repeat(value), "y".repeat(value)))
                        .collect();
                    (format!("ConfigMap/ns/c{o}"), f)
                })
                .collect(),
            prunes: vec![],
            unchanged: 0,
            prune_refused: None,
            rejected: vec![],
        }
    }

    #[test]
    fn small_answers_are_whole() {
        let a = answer("1".into(), big(3, 2, 5));
        assert!(!a.truncated);
        assert_eq!(a.changes.len(), 3);
        assert_eq!(a.changes[2].fields.len(), 2);
    }

    #[test]
    fn answers_are_cut_to_their_bounds_and_say_so() {
        let a = answer("1".into(), big(1000, 50, 5));
        assert!(a.truncated);
        assert_eq!(a.changes.len(), MAX_CHANGES);
        assert!(a.changes.iter().all(|c| c.fields.len() == MAX_FIELDS));

        // Large values: fields are dropped from the end until it fits.
        let a = answer("1".into(), big(300, 30, 2000));
        assert!(a.truncated);
        assert!(a.encoded_len() <= MAX_BYTES, "{}", a.encoded_len());
        assert!(!a.changes[0].fields.is_empty());
        assert!(a.changes[299].fields.is_empty());
        assert_eq!(a.changes.len(), 300);
    }
}
