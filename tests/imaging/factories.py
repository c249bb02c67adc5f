"""Factories for index rows (Patient, Study, Series, Instance) made without Orthanc."""

from __future__ import annotations

import factory
from pydicom.uid import generate_uid

from imaging.models import Instance, Patient, Series, Study
from tests.factories import ProjectFactory

PREFIX = "1.2.826.0.1.3680043.8.498."


class PatientFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Patient

    project = factory.SubFactory(ProjectFactory)
    patient_id = factory.Sequence(lambda n: f"ANON-{n:06d}")
    patient_name = factory.LazyAttribute(lambda p: f"ANON^{p.patient_id}")


class StudyFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Study

    project = factory.SubFactory(ProjectFactory)
    patient = factory.SubFactory(PatientFactory, project=factory.SelfAttribute("..project"))
    study_instance_uid = factory.LazyFunction(lambda: generate_uid(PREFIX))
    orthanc_id = ""
    study_description = "CT chest"
    modalities_in_study = "CT"
    number_of_series = 1
    number_of_instances = 1


class SeriesFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Series

    study = factory.SubFactory(StudyFactory)
    series_instance_uid = factory.LazyFunction(lambda: generate_uid(PREFIX))
    modality = "CT"
    series_number = 1
    number_of_instances = 1


class InstanceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Instance

    series = factory.SubFactory(SeriesFactory)
    sop_instance_uid = factory.LazyFunction(lambda: generate_uid(PREFIX))
    sop_class_uid = "1.2.840.10008.5.1.4.1.1.2"
    instance_number = 1
