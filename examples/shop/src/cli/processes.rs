//! The story on PostgreSQL: each service a process of its own (`serve`), started from this
//! executable; orders placed from the story's process, which hosts the aggregates it needs;
//! the services followed through what they committed to the store. Chapter 3 kills the stock
//! process with SIGKILL, chapter 4 starts it again, chapter 5 starts a second one as a standby
//! and kills the first: the standby takes over.

use std::io::BufRead;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant};

use tidings::subscription::{subscription_status_from_store, SubscriptionStatus};

use super::story::{report, Rng, Story, StoryArgs, SETTLE};
use super::{hide_password, open_postgres, CliError};
use crate::catalog::{Line, CATALOG};
use crate::invariants::INVARIANTS;
use crate::view::PaymentView;
use crate::{Service, Shop};

/// How long a service process may take to print that it holds or stands by.
const ROLE: Duration = Duration::from_secs(30);
/// How long a stopped process may take to exit before it is killed.
const EXIT: Duration = Duration::from_secs(5);

/// One `serve` process, followed through the lines it prints. Dropping it kills it (SIGKILL),
/// so that no service outlives the story, whatever way the story ends.
struct ServiceProcess {
    service: Service,
    child: Child,
    /// Its lines, with when they were read.
    lines: Receiver<(Instant, String)>,
    /// The generation of the lease it last said it holds, and when it said so.
    holding: Option<(u64, Instant)>,
    /// The last `REPEATS` figure it printed.
    repeats: u64,
    /// Whether it said it stands by, at least once.
    stood_by: bool,
}

impl ServiceProcess {
    /// Starts `serve --service <service>` from this executable on the story's store.
    fn spawn(service: Service, url: &str, schema: &str) -> Result<ServiceProcess, CliError> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(&exe)
            .args(["serve", "--service", service.name(), "--store", url])
            .args(["--schema", schema])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting {} serve: {e}", exe.display()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or("no stdout of the service process")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Ok(ServiceProcess {
            service,
            child,
            lines,
            holding: None,
            repeats: 0,
            stood_by: false,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads what it printed so far; an error if it failed or exited.
    fn poll(&mut self) -> Result<Vec<String>, CliError> {
        let mut read = Vec::new();
        loop {
            match self.lines.try_recv() {
                Ok((at, line)) => {
                    let words: Vec<&str> = line.split_whitespace().collect();
                    match words.as_slice() {
                        ["HOLDING", _, "generation", generation, ..] => {
                            self.holding = generation.parse().ok().map(|g| (g, at));
                        }
                        ["STANDBY", ..] => {
                            self.holding = None;
                            self.stood_by = true;
                        }
                        ["REPEATS", _, n] => self.repeats = n.parse().unwrap_or(self.repeats),
                        ["FAILED", ..] => return Err(format!("service process: {line}").into()),
                        _ => {}
                    }
                    read.push(line);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let status = self.child.try_wait()?;
                    return Err(format!(
                        "the {} process (pid {}) ended: {status:?}",
                        self.service.name(),
                        self.pid()
                    )
                    .into());
                }
            }
        }
        Ok(read)
    }

    /// Waits (at most [`ROLE`]) until it prints a line that starts with `word`; returns it.
    async fn wait_for(&mut self, word: &str) -> Result<String, CliError> {
        let started = Instant::now();
        loop {
            if let Some(line) = self.poll()?.into_iter().find(|l| l.starts_with(word)) {
                return Ok(line);
            }
            if started.elapsed() > ROLE {
                return Err(format!(
                    "the {} process (pid {}) did not say {word} within {ROLE:?}",
                    self.service.name(),
                    self.pid()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Kills it with SIGKILL and waits for it to be gone.
    fn kill(&mut self) -> Result<(), CliError> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Asks it to stop (SIGTERM, through `kill`: it saves its checkpoint and gives up its
    /// lease), and kills it if it has not exited within [`EXIT`].
    async fn stop(&mut self) {
        let asked = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let started = Instant::now();
        while asked && started.elapsed() < EXIT {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = self.kill();
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Drops every table of `schema` (`DROP SCHEMA ... CASCADE`): `story --fresh`.
async fn drop_schema(url: &str, schema: &str) -> Result<(), CliError> {
    tidings::store::validate_postgres_schema(schema)?;
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let driver = actix::spawn(async move {
        let _ = connection.await;
    });
    let result = client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await;
    drop(client);
    let _ = driver.await;
    Ok(result?)
}

/// The processes of the story, with the repeats of those that ended.
struct Processes {
    running: Vec<ServiceProcess>,
    /// `REPEATS` of the processes killed or stopped.
    repeats_of_ended: u64,
    url: String,
    schema: String,
}

impl Processes {
    fn start(&mut self, service: Service) -> Result<&mut ServiceProcess, CliError> {
        let process = ServiceProcess::spawn(service, &self.url, &self.schema)?;
        self.running.push(process);
        Ok(self.running.last_mut().expect("just pushed"))
    }

    /// The process of `service` that holds its lease, as far as their lines say.
    fn holder(&mut self, service: Service) -> Result<&mut ServiceProcess, CliError> {
        for p in &mut self.running {
            p.poll()?;
        }
        self.running
            .iter_mut()
            .find(|p| p.service == service && p.holding.is_some())
            .ok_or_else(|| format!("no process holds {}", service.name()).into())
    }

    /// Kills the process with `pid` (SIGKILL).
    fn kill(&mut self, pid: u32) -> Result<(), CliError> {
        let at = self
            .running
            .iter()
            .position(|p| p.pid() == pid)
            .ok_or("no such process")?;
        let mut process = self.running.remove(at);
        process.kill()?;
        let _ = process.poll();
        self.repeats_of_ended += process.repeats;
        Ok(())
    }

    /// Reads every process's lines (an error if one failed or died unasked).
    fn poll(&mut self) -> Result<(), CliError> {
        for p in &mut self.running {
            p.poll()?;
        }
        Ok(())
    }

    fn repeats(&self) -> u64 {
        self.repeats_of_ended + self.running.iter().map(|p| p.repeats).sum::<u64>()
    }

    /// Stops every process politely (killing those that do not stop).
    async fn stop_all(&mut self) {
        for p in &mut self.running {
            p.stop().await;
            let _ = p.poll();
        }
        self.repeats_of_ended += self.running.iter().map(|p| p.repeats).sum::<u64>();
        self.running.clear();
    }
}

pub async fn run(url: &str, schema: &str, args: StoryArgs) -> Result<ExitCode, CliError> {
    if args.gateway_failures > 0 {
        return Err(
            "--gateway-failures is for the embedded story: with --store the payment \
                    service runs in a process of its own"
                .into(),
        );
    }
    if args.console.is_some() {
        return Err(
            "--console is for the embedded story: with --store, run `shop_example admin \
             console` (or `tidings console --store URL --schema NAME`) beside it"
                .into(),
        );
    }
    if args.fresh {
        drop_schema(url, schema).await?;
    }
    let store = open_postgres(url, schema, 6).await?;
    let shop = Shop::with_store(store.clone(), super::serve::config(None));
    let head = store.head();
    println!("tidings shop: order, payment and stock react to each other's events");
    let place = format!("schema {schema} of {}", hide_password(url));
    if head == 0 {
        println!("the store is PostgreSQL, {place} (new)");
    } else {
        println!(
            "the store is PostgreSQL, {place} ({head} events from earlier runs: this run adds to \
             them; `story --fresh` starts over)"
        );
        let checks = crate::invariants::check(&*store).await?;
        if let Some(c) = checks.iter().find(|c| !c.pass && c.name == INVARIANTS[0]) {
            shop.shutdown().await;
            return Err(format!(
                "{place} holds events this shop cannot read ({}); run `story --fresh` to start \
                 over, or pick another --schema",
                c.detail
            )
            .into());
        }
    }
    println!(
        "each service runs as a process of its own: shop_example serve --service NAME --store \
         URL --schema {schema}"
    );
    let next = shop.next_order_number().await?;
    let mut story = Story {
        shop,
        rng: Rng(args.seed.unwrap_or(next)),
        next,
        placed: Vec::new(),
        started: Instant::now(),
    };
    let mut processes = Processes {
        running: Vec::new(),
        repeats_of_ended: 0,
        url: url.to_owned(),
        schema: schema.to_owned(),
    };
    let result = tell(&mut story, &mut processes, args.orders).await;
    processes.stop_all().await;
    if result.is_ok() {
        story.say("the service processes are stopped (SIGTERM)");
    }
    let Story { shop, .. } = story;
    shop.shutdown().await;
    result
}

/// The services whose processes run in chapter 3 (stock is down).
const WITHOUT_STOCK: [Service; 3] = [Service::Payments, Service::Fulfilment, Service::View];

async fn tell(
    story: &mut Story,
    processes: &mut Processes,
    orders: u32,
) -> Result<ExitCode, CliError> {
    let restock: Vec<Line> = CATALOG
        .iter()
        .map(|(sku, _)| Line::new(*sku, orders.max(4) * 5 / 4))
        .collect();

    println!();
    println!("1. The shop opens");
    story.shop.restock(restock.clone()).await?;
    let restocked: Vec<String> = restock
        .iter()
        .map(|l| format!("{} +{}", l.sku, l.quantity))
        .collect();
    story.say(&format!(
        "the warehouse is restocked: {}",
        restocked.join(", ")
    ));
    let mut started = Vec::new();
    for service in Service::ALL {
        processes.start(service)?;
    }
    for service in Service::ALL {
        let process = processes
            .running
            .iter_mut()
            .find(|p| p.service == service)
            .ok_or("no process")?;
        process.wait_for("HOLDING").await?;
        started.push(format!(
            "{} (pid {}, generation {})",
            service.name(),
            process.pid(),
            process.holding.map_or(0, |(g, _)| g)
        ));
    }
    story.say(&format!(
        "service processes started: {}",
        started.join(", ")
    ));
    story.shop.settle_committed(&Service::ALL, SETTLE).await?;

    println!();
    println!("2. Orders flow: each is charged, reserved, then confirmed or cancelled");
    story.place(orders).await?;
    story.shop.settle_committed(&Service::ALL, SETTLE).await?;
    processes.poll()?;
    let (o, _) = story.outcomes().await?;
    story.say(&o.line());

    println!();
    println!("3. The stock process is killed (SIGKILL); orders keep coming");
    let pid = processes.holder(Service::Stock)?.pid();
    processes.kill(pid)?;
    let checkpoint = story
        .shop
        .store()
        .load_checkpoint(Service::Stock.name())
        .await?
        .unwrap_or(0);
    story.say(&format!(
        "stock (pid {pid}) killed with SIGKILL; its last committed checkpoint is {checkpoint}"
    ));
    let rounds = 3;
    for round in 0..rounds {
        let n = orders / rounds + u32::from(round < orders % rounds);
        story.place(n).await?;
        story.shop.settle_committed(&WITHOUT_STOCK, SETTLE).await?;
        processes.poll()?;
        let (o, model) = story.outcomes().await?;
        let lag = story.shop.committed_lag(Service::Stock).await?;
        let verified = story
            .placed
            .iter()
            .filter_map(|id| model.orders.get(id))
            .filter(|s| s.payment != PaymentView::Pending)
            .count();
        story.say(&format!(
            "{} orders placed, {verified} charged or declined; {} paid orders wait for stock; stock lag {lag} events",
            o.placed, o.paid_waiting
        ));
    }

    println!();
    println!("4. The stock process starts again and catches up on every event it missed");
    let before = story.shop.committed_lag(Service::Stock).await?;
    let restarted = Instant::now();
    let process = processes.start(Service::Stock)?;
    let pid = process.pid();
    process.wait_for("HOLDING").await?;
    let (generation, since) = process.holding.ok_or("the stock process does not hold")?;
    let waited = since.duration_since(restarted);
    let how = if process.stood_by {
        "it stood by until the killed process's lease expired, then took it"
    } else {
        "the killed process's lease had expired: it took it"
    };
    story.say(&format!(
        "stock started again (pid {pid}): {how} {} ms after it started (generation {generation})",
        waited.as_millis()
    ));
    let mut lags = vec![before];
    loop {
        tokio::time::sleep(Duration::from_millis(25)).await;
        processes.poll()?;
        let lag = story.shop.committed_lag(Service::Stock).await?;
        if lags.last() != Some(&lag) {
            lags.push(lag);
        }
        if lag == 0 {
            break;
        }
        if restarted.elapsed() > SETTLE {
            return Err("the stock service did not catch up".into());
        }
    }
    story.shop.settle_committed(&Service::ALL, SETTLE).await?;
    let mut lags: Vec<String> = lags.iter().map(u64::to_string).collect();
    if lags.len() > 7 {
        lags.splice(3..lags.len() - 3, ["…".to_owned()]);
    }
    story.say(&format!(
        "stock lag {} events (as committed), caught up {} ms after it was started",
        lags.join(" → "),
        restarted.elapsed().as_millis()
    ));
    let (o, _) = story.outcomes().await?;
    story.say(&o.line());

    println!();
    println!("5. A second stock process stands by; the first is killed and the standby takes over");
    let standby = processes.start(Service::Stock)?;
    let standby_pid = standby.pid();
    standby.wait_for("STANDBY").await?;
    let lease = story
        .shop
        .store()
        .load_lease(Service::Stock.name())
        .await?
        .ok_or("no lease of the stock service in the store")?;
    story.say(&format!(
        "stock standby started (pid {standby_pid}): the store says pid {} holds the lease, \
         generation {}",
        lease.holder.pid, lease.generation
    ));
    let holder = processes.holder(Service::Stock)?.pid();
    let killed = Instant::now();
    processes.kill(holder)?;
    story.say(&format!(
        "stock (pid {holder}) killed with SIGKILL; orders keep coming"
    ));
    story.place(orders / 3).await?;
    let standby = processes
        .running
        .iter_mut()
        .find(|p| p.pid() == standby_pid)
        .ok_or("the standby is gone")?;
    standby.poll()?;
    if standby.holding.is_none() {
        standby.wait_for("HOLDING").await?;
    }
    let (_, since) = standby.holding.ok_or("the standby does not hold")?;
    let took_over = since.duration_since(killed);
    story.shop.settle_committed(&Service::ALL, SETTLE).await?;
    let lease = story
        .shop
        .store()
        .load_lease(Service::Stock.name())
        .await?
        .ok_or("no lease of the stock service in the store")?;
    story.say(&format!(
        "the standby took over {} ms after the kill: the store says pid {} holds the lease, \
         generation {}",
        took_over.as_millis(),
        lease.holder.pid,
        lease.generation
    ));
    let (o, _) = story.outcomes().await?;
    story.say(&o.line());

    processes.poll()?;
    let mut statuses: Vec<SubscriptionStatus> = Vec::new();
    for service in Service::ALL {
        if let Some(s) =
            subscription_status_from_store(&**story.shop.store(), service.name()).await?
        {
            statuses.push(s);
        }
    }
    report(story, &statuses, processes.repeats()).await
}
