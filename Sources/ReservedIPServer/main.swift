// reserved-ip: the reserved-IP orchestrator, sole owner of the reserved-IP database.
import ArgumentParser
import HarpoonAPI
import ReservedIP
import SQLiteSupport
import ServiceRuntime

struct ReservedIPCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "reserved-ip", abstract: "The reserved-IP orchestrator.")

    @Option(help: "Address to listen on.") var host = "127.0.0.1"
    @OptionGroup var runtime: RuntimeOptions
    @Option(help: "Port to listen on (0: any free port).") var port = 50080
    @Option(help: "The SQLite database file (created if missing).") var database = "reserved-ip.sqlite"
    @Option(help: "When a commit is on disk: full (synced before it is acknowledged: survives a machine crash) or normal (synced at checkpoints: survives a process crash).")
    var sqliteSynchronous = "full"
    @Option(help: "Harpoon, host:port (replicas: several, comma-separated).") var harpoon = "127.0.0.1:50050"
    @Option(help: "An address pool, region=a.b.c.d/n; repeat for more blocks or regions.") var pool: [String] = []

    func run() async throws {
        let pools: AddressPools
        do {
            pools = try AddressPools(parsing: pool)
        } catch {
            throw ValidationError(error.description)
        }
        if pools.blocks.isEmpty { throw ValidationError("give at least one --pool region=a.b.c.d/n") }
        guard let durability = SQLiteDurability(rawValue: sqliteSynchronous) else {
            throw ValidationError("--sqlite-synchronous is full or normal, not '\(sqliteSynchronous)'")
        }
        let harpoons = try harpoon.split(separator: ",").map { try ServiceRuntime.address(String($0)) }
        guard !harpoons.isEmpty else { throw ValidationError("--harpoon needs at least one host:port") }
        let harpoonClient = ServiceRuntime.serviceClient(harpoons)
        let store = try ReservedIPStore(path: database, pools: pools, durability: durability)
        let driver = TransitionDriver(store: store, harpoon: harpoonClient)
        let server = RPCServer(
            configuration: .init(host: host, port: port),
            services: [ReservedIPService(store: store, driver: driver, harpoon: harpoonClient)],
            interceptors: ServiceRuntime.serverInterceptors
        )
        let metrics = try await ServiceRuntime.startMetrics(port: runtime.metricsPort, host: host)
        try await server.start()
        try await driver.resume()
        ServiceRuntime.announce("reserved-ip ready on \(host):\(server.port ?? port)")
        await ServiceRuntime.run(server: server, metrics: metrics, background: [{ await driver.watch() }])
    }
}

ServiceRuntime.runConcurrencyOnEventLoops()
await ServiceRuntime.main(ReservedIPCommand.self)
