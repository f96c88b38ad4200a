#!/usr/bin/perl
# An independent DKIM verifier for the tests (Perl's Mail::DKIM, not dkimpy).
# usage: dkim_verify.pl NAMESERVER_IP PORT < message
# prints one line per signature: "DOMAIN ALGORITHM RESULT", then "result OVERALL".
use strict;
use warnings;
use Mail::DKIM::Verifier;
use Mail::DKIM::DNS;
use Net::DNS::Resolver;

my ($ip, $port) = @ARGV;
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(
    nameservers => [$ip], port => $port, recurse => 1,
    udp_timeout => 5, tcp_timeout => 5, retry => 1));
my $verifier = Mail::DKIM::Verifier->new();
binmode STDIN;
while (my $line = <STDIN>) {
    $line =~ s/\r?\n\z/\r\n/;
    $verifier->PRINT($line);
}
$verifier->CLOSE;
foreach my $signature ($verifier->signatures) {
    printf "%s %s %s\n", $signature->domain, $signature->algorithm, $signature->result_detail;
}
printf "result %s\n", $verifier->result;
