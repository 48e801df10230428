// One OpenSearch node from the jars of Maven Central, for tests and benchmarks on one machine.
//
// The release tarball's launcher is not on Maven Central; the server is, and so are its
// modules (the HTTP transport, the analyzers, painless). This starts a node with those
// modules on the class path. Settings come as `key=value` arguments (path.home, path.data,
// http.port, transport.port, cluster.name, node.name, discovery and the rest); the node stops
// on SIGTERM.

import java.nio.file.Path;
import java.util.Collection;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;

import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.plugins.Plugin;

public final class SearchNode {
    private static final class WithModules extends Node {
        WithModules(Environment environment, Collection<Class<? extends Plugin>> modules) {
            super(environment, modules, true);
        }
    }

    public static void main(String[] args) throws Exception {
        Settings.Builder settings = Settings.builder();
        for (String arg : args) {
            int eq = arg.indexOf('=');
            if (eq < 1) {
                throw new IllegalArgumentException("settings are key=value, not " + arg);
            }
            settings.put(arg.substring(0, eq), arg.substring(eq + 1));
        }
        Settings given = settings.build();
        Path config = Path.of(given.get("path.home"), "config");
        Environment environment =
            InternalSettingsPreparer.prepareEnvironment(given, Map.of(), config, () -> given.get("node.name"));
        List<Class<? extends Plugin>> modules = List.of(
            org.opensearch.transport.Netty4Plugin.class,
            org.opensearch.analysis.common.CommonAnalysisPlugin.class,
            org.opensearch.painless.PainlessPlugin.class);
        Node node = new WithModules(environment, modules);
        // The node's threads are daemons: the main thread keeps the JVM up until SIGTERM.
        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
            } catch (Exception e) {
                e.printStackTrace();
            } finally {
                stopped.countDown();
            }
        }));
        node.start();
        System.out.println("search node started");
        stopped.await();
    }
}
