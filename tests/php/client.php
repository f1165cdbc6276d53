<?php
// A PHP Gearman client (php-gearman, libgearman) for the interop tests.
//
//   php client.php background SERVERS FUNCTION COUNT PAUSE_MS
//     submits COUNT background jobs with the uniques php-0..php-COUNT-1 and priorities high,
//     normal, low in turn, pausing PAUSE_MS between two; prints "ok UNIQUE" once a server acknowledged one, "fail UNIQUE
//     CODE" when none did (the job is not retried).
//   php client.php foreground SERVERS FUNCTION PAYLOAD
//     runs one foreground job; prints one JSON line per WORK_DATA, WORK_WARNING and
//     WORK_STATUS, then {"complete": RESULT}.
// SERVERS is "host:port,host:port,..." (GearmanClient::addServers).

function say(string $line): void {
    fwrite(STDOUT, $line . "\n");
    fflush(STDOUT);
}

[$script, $mode, $servers, $function] = array_slice($argv, 0, 4);
$client = new GearmanClient();
$client->addServers($servers);
$client->setTimeout(5000);

if ($mode === "background") {
    $count = (int)$argv[4];
    $pause = (int)$argv[5];
    // addTask*Background + runTasks, one job at a time: with several servers, doBackground
    // of php-gearman 2.1.0 on libgearman 1.1.20 (Debian 12) often waits out its timeout
    // although gearmand sent JOB_CREATED, while the task API gets every answer.
    $submit = ["addTaskHighBackground", "addTaskBackground", "addTaskLowBackground"];
    for ($i = 0; $i < $count; $i++) {
        $unique = "php-$i";
        $task = $client->{$submit[$i % 3]}($function, "payload-$i", null, $unique);
        if (@$client->runTasks() && $task->returnCode() === GEARMAN_SUCCESS) {
            say("ok $unique");
        } else {
            say("fail $unique " . $client->returnCode() . " " . $client->error());
        }
        usleep($pause * 1000);
    }
} elseif ($mode === "foreground") {
    $client->setDataCallback(function (GearmanTask $task) {
        say(json_encode(["data" => $task->data()]));
    });
    $client->setWarningCallback(function (GearmanTask $task) {
        say(json_encode(["warning" => $task->data()]));
    });
    $client->setStatusCallback(function (GearmanTask $task) {
        say(json_encode(["status" => [$task->taskNumerator(), $task->taskDenominator()]]));
    });
    $client->setCompleteCallback(function (GearmanTask $task) {
        say(json_encode(["complete" => $task->data()]));
    });
    $client->setFailCallback(function (GearmanTask $task) {
        say(json_encode(["fail" => $task->jobHandle()]));
    });
    $client->addTask($function, $argv[4], null, "php-fg-" . getmypid());
    if (!$client->runTasks()) {
        say(json_encode(["error" => $client->error()]));
        exit(1);
    }
} else {
    fwrite(STDERR, "unknown mode $mode\n");
    exit(2);
}
