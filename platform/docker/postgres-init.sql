-- Runs once, when the postgres volume is first created: Orthanc keeps its index in its
-- own database beside the platform's.
CREATE DATABASE orthanc;
