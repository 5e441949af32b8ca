//! The device app's processes told apart by role, from what any user may
//! read of them: the name the kernel keeps (`comm`), the parent (`stat`)
//! and the command line. Pure: the `app` collector reads, this decides.
//!
//! Two generations of the app (jetkvm/kvm, read at 55f02ce and bde0a08):
//! - one binary (0.5.0 on): a supervisor executes its own binary again as
//!   the app, with the same arguments (only the environment differs, and
//!   that no other user may read); the app executes it a third time with
//!   `-subcomponent=native`, the process that captures video. All three are
//!   `jetkvm_app`. Once running, each writes a title over its command line:
//!   `jetkvm: [supervisor] …`, `jetkvm: [app] …` (`[app+failsafe]` when it
//!   runs without video after native crashed too often), `jetkvm: [native…]`.
//! - two binaries (to 0.4.8): `jetkvm_app` is the app; it starts the
//!   separate `jetkvm_native`, no supervisor, no titles.
//!
//! The title decides where there is one, then the native argument, then a
//! second binary's name, then parentage: a process of the app's binary
//! whose parent is one too is the app, and that parent the supervisor.

/// What a process of the app does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Supervisor,
    App,
    Native,
}

impl Role {
    /// Every role, in the order they are exported.
    pub const ALL: [Role; 3] = [Role::Supervisor, Role::App, Role::Native];

    pub fn label(self) -> &'static str {
        match self {
            Role::Supervisor => "supervisor",
            Role::App => "app",
            Role::Native => "native",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How the app runs: which roles it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generation {
    /// Supervisor, app and native, one binary.
    OneBinary,
    /// The app and a separate native binary.
    TwoBinaries,
}

impl Generation {
    pub fn label(self) -> &'static str {
        match self {
            Generation::OneBinary => "one_binary",
            Generation::TwoBinaries => "two_binaries",
        }
    }

    /// Whether this generation has processes of `role`; with the
    /// generation unknown, only the app is sure to exist.
    pub fn has(generation: Option<Generation>, role: Role) -> bool {
        match (generation, role) {
            (_, Role::App) | (Some(Generation::OneBinary), _) => true,
            (Some(Generation::TwoBinaries), r) => r == Role::Native,
            (None, _) => false,
        }
    }
}

/// One process of one of the app's binaries.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub pid: u32,
    pub parent: Option<u32>,
    /// Which of the app's binary names it has: 0 is the app's own, any
    /// other a separate native binary.
    pub binary: usize,
    pub cmdline: Vec<String>,
    /// Start time, seconds since the epoch: the oldest of a role wins.
    pub start: u64,
}

/// The roles found among the candidates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// The pid of each role, by [`Role::ALL`]'s order.
    pub pids: [Option<u32>; 3],
    pub generation: Option<Generation>,
    /// Whether the app says it runs in its failsafe mode (a title of the
    /// one-binary generation); `None` without a title.
    pub failsafe: Option<bool>,
}

impl Found {
    pub fn pid(&self, role: Role) -> Option<u32> {
        self.pids[role.index()]
    }
}

/// What a command line says of its process: the role, and whether it is
/// titled (`Some(failsafe)`) or only named by an argument (`None`).
fn hint(cmdline: &[String]) -> Option<(Role, Option<bool>)> {
    if let Some(title) = cmdline.first().and_then(|first| title(first)) {
        return Some(title);
    }
    let native = cmdline.iter().enumerate().any(|(i, a)| {
        let a = a.trim_start_matches('-');
        a == "subcomponent=native"
            || (a == "subcomponent" && cmdline.get(i + 1).is_some_and(|n| n == "native"))
    });
    native.then_some((Role::Native, None))
}

/// `jetkvm: [app+failsafe] ready` (and the older `…/jetkvm_app [sup]`):
/// the word in brackets after a space.
fn title(first: &str) -> Option<(Role, Option<bool>)> {
    let open = first.find(" [")? + 2;
    let close = open + first[open..].find(']')?;
    let mut words = first[open..close].split(['+', '{']);
    let role = match words.next()? {
        "supervisor" | "sup" => Role::Supervisor,
        "app" => Role::App,
        "native" => Role::Native,
        _ => return None,
    };
    Some((role, Some(words.any(|w| w == "failsafe"))))
}

/// Assigns each candidate a role, and each role its oldest candidate.
pub fn assign(candidates: &[Candidate]) -> Found {
    let hints: Vec<_> = candidates.iter().map(|c| hint(&c.cmdline)).collect();
    // A process of the app's binary that is not native: the supervisor's
    // child, or the supervisor.
    let not_native = |i: usize| candidates[i].binary == 0 && !matches!(hints[i], Some((Role::Native, _)));
    let index_of = |pid: Option<u32>| candidates.iter().position(|c| Some(c.pid) == pid);
    let roles: Vec<Role> = (0..candidates.len())
        .map(|i| match (hints[i], candidates[i].binary) {
            (Some((role, _)), _) => role,
            (None, 0) => {
                if index_of(candidates[i].parent).is_some_and(not_native) {
                    Role::App
                } else if (0..candidates.len())
                    .any(|j| not_native(j) && candidates[j].parent == Some(candidates[i].pid))
                {
                    Role::Supervisor
                } else {
                    Role::App
                }
            }
            (None, _) => Role::Native,
        })
        .collect();
    let mut found = Found::default();
    for role in Role::ALL {
        let chosen = (0..candidates.len())
            .filter(|&i| roles[i] == role)
            .min_by_key(|&i| (candidates[i].start, candidates[i].pid));
        found.pids[role.index()] = chosen.map(|i| candidates[i].pid);
        if role == Role::App {
            found.failsafe = chosen.and_then(|i| hints[i]).and_then(|(_, failsafe)| failsafe);
        }
    }
    found.generation = generation(candidates, &hints, &roles);
    found
}

/// A supervisor, a title, or a native of the app's own binary mark the
/// one-binary generation; a native of another name, the two-binary one.
fn generation(
    candidates: &[Candidate],
    hints: &[Option<(Role, Option<bool>)>],
    roles: &[Role],
) -> Option<Generation> {
    let one = (0..candidates.len()).any(|i| {
        roles[i] == Role::Supervisor
            || matches!(hints[i], Some((_, Some(_))))
            || (roles[i] == Role::Native && candidates[i].binary == 0)
    });
    let two = candidates.iter().any(|c| c.binary != 0);
    match (one, two) {
        (true, _) => Some(Generation::OneBinary),
        (false, true) => Some(Generation::TwoBinaries),
        (false, false) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(pid: u32, parent: u32, binary: usize, cmdline: &[&str]) -> Candidate {
        Candidate {
            pid,
            parent: Some(parent),
            binary,
            cmdline: cmdline.iter().map(|s| s.to_string()).collect(),
            start: u64::from(pid),
        }
    }

    const EXE: &str = "/userdata/jetkvm/bin/jetkvm_app";

    #[test]
    fn one_binary_by_titles() {
        let found = assign(&[
            c(300, 1, 0, &["jetkvm: [supervisor] started (pid=301)"]),
            c(301, 300, 0, &["jetkvm: [app] ready"]),
            c(302, 301, 0, &["jetkvm: [native+video{h264,1920x1080,60}] ready"]),
        ]);
        assert_eq!(found.pids, [Some(300), Some(301), Some(302)]);
        assert_eq!((found.generation, found.failsafe), (Some(Generation::OneBinary), Some(false)));
    }

    #[test]
    fn one_binary_before_its_titles_by_parentage_and_argument() {
        // The first moments: argv as executed. The app's is the supervisor's.
        let found = assign(&[
            c(302, 301, 0, &[EXE, "-subcomponent=native"]),
            c(301, 300, 0, &[EXE]),
            c(300, 1, 0, &[EXE]),
        ]);
        assert_eq!(found.pids, [Some(300), Some(301), Some(302)]);
        assert_eq!(found.generation, Some(Generation::OneBinary));
        // Its native down: still the one-binary generation.
        let found = assign(&[c(301, 300, 0, &[EXE]), c(300, 1, 0, &[EXE])]);
        assert_eq!(
            (found.pids, found.generation),
            ([Some(300), Some(301), None], Some(Generation::OneBinary))
        );
        // The flag's other spellings.
        for args in [&["--subcomponent=native"][..], &["-subcomponent", "native"]] {
            let cmdline: Vec<&str> = std::iter::once(EXE).chain(args.iter().copied()).collect();
            assert_eq!(assign(&[c(5, 1, 0, &cmdline)]).pid(Role::Native), Some(5));
        }
    }

    #[test]
    fn the_supervisor_gone_its_app_is_still_the_app() {
        let found =
            assign(&[c(301, 1, 0, &["jetkvm: [app] ready"]), c(302, 301, 0, &["jetkvm: [native] ready"])]);
        assert_eq!(found.pids, [None, Some(301), Some(302)]);
        assert_eq!(found.generation, Some(Generation::OneBinary));
    }

    #[test]
    fn failsafe_and_the_development_titles() {
        let found = assign(&[
            c(300, 1, 0, &["/userdata/jetkvm/bin/jetkvm_app [sup]"]),
            c(301, 300, 0, &["jetkvm: [app+failsafe] ready"]),
        ]);
        assert_eq!(found.pids, [Some(300), Some(301), None]);
        assert_eq!(found.failsafe, Some(true));
    }

    #[test]
    fn two_binaries() {
        let found = assign(&[c(200, 1, 0, &[EXE]), c(210, 200, 1, &["/userdata/jetkvm/bin/jetkvm_native"])]);
        assert_eq!(found.pids, [None, Some(200), Some(210)]);
        assert_eq!((found.generation, found.failsafe), (Some(Generation::TwoBinaries), None));
        // The app alone: which generation is not known.
        let found = assign(&[c(200, 1, 0, &[EXE])]);
        assert_eq!((found.pids, found.generation), ([None, Some(200), None], None));
        // Native alone (the app restarting): the two-binary generation.
        let found = assign(&[c(210, 1, 1, &["jetkvm_native"])]);
        assert_eq!((found.pids, found.generation), ([None, None, Some(210)], Some(Generation::TwoBinaries)));
    }

    #[test]
    fn the_oldest_of_a_role_wins_and_nothing_is_nothing() {
        let mut older = c(160, 1, 0, &["jetkvm: [app] ready"]);
        older.start = 9;
        let found = assign(&[c(150, 1, 0, &["jetkvm: [app] ready"]), older]);
        assert_eq!(found.pid(Role::App), Some(160));
        assert_eq!(assign(&[]), Found::default());
        // Titles that are not the app's mean nothing.
        assert_eq!(hint(&["sshd: [priv]".into()]), None);
        assert_eq!(hint(&["jetkvm: [app".into()]), None);
    }

    #[test]
    fn which_roles_a_generation_has() {
        let has = |g| Role::ALL.map(|r| Generation::has(g, r));
        assert_eq!(has(Some(Generation::OneBinary)), [true, true, true]);
        assert_eq!(has(Some(Generation::TwoBinaries)), [false, true, true]);
        assert_eq!(has(None), [false, true, false]);
    }
}
